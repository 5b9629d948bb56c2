// Package replay holds implementations of validate.ReplayStore, the memory of
// accepted message ids that makes a replayed message fail the last check.
//
// Memory is the in-process store. It keeps each id until its expiry (the
// message's timestamp plus the allowed clock skew: after that a replay is
// rejected as stale anyway), never forgets a live id, and when full it
// refuses new ids with validate.ErrReplayFull (fail closed) instead of
// evicting one. Durability across restarts comes from the outbox, which
// stores accepted ids with their messages and reloads them into Memory at
// start.
package replay
