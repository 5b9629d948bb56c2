// Package outbox is the gateway's durable memory: accepted messages waiting
// for the backend (outbox), the ids of accepted messages still inside the
// replay window (seen), and messages that gave up (deadletter), all in one
// SQLite file in WAL mode.
//
// It sits between validation and forwarding. A message is acked to the
// broker only after Writer has committed its row and its id together, in
// one transaction shared with many other messages (group commit). After a
// crash, rows still in outbox are forwarded again and seen is loaded back
// into the replay store, so neither data nor replay protection is lost.
package outbox
