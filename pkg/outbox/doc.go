// Package outbox is the gateway's durable memory as its stages see it,
// apart from any storage engine: the accepted message (Record), the dead
// letter (Dead), the statistics (Stats), what a commit refused (Refusal),
// the Committer an engine implements, and the Writer that group-commits
// to it.
//
// It sits between validation and forwarding. A message is acked to the
// broker only after Writer has committed its row and its replay id
// together, in one transaction shared with many other messages (group
// commit). The engines are packages of their own: sqlitestore (one
// gateway's SQLite file) and pgstore (one PostgreSQL database shared by
// several gateways); package storage chooses one.
package outbox
