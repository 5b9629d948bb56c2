// Package sqlitestore is the SQLite storage engine of one gateway: accepted
// messages waiting for the backend (outbox), the ids of accepted messages
// still inside the replay window (seen, with the horizon below which ids
// may have been pruned), and messages that gave up (deadletter), all in
// one SQLite file in WAL mode, guarded by a lock file (Lock) so that one
// gateway at a time owns it. The registry and audit trail live in another
// SQLite file (packages registry and audit).
//
// After a crash, rows still in the outbox are forwarded again and seen is
// loaded back into the replay store, so neither data nor replay protection
// is lost. Package storage chooses it (storage.engine sqlite, the default).
package sqlitestore
