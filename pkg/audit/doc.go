// Package audit is iotgw's tamper-evident audit trail: a hash chain of
// entries in the registry's SQLite file, written by the admin CLI (device
// add, rotate, disable, enable, revoke, remove, kek rotate, deadletter
// retry and drop) and by the gateway (every rejection, folded per second,
// and quarantines), and checked by `iotgw audit verify`.
//
// It sits beside the pipeline, not in it: the gateway hands rejections to
// a Writer, which folds repeats in memory and appends them from its own
// goroutine, so validation never waits for the disk.
//
// # Tables
//
// audit_log holds the entries (seq 1, 2, 3, ... with no gaps); audit_head
// holds one row, the seq and hash of the newest entry; audit_migrations
// tracks this package's own schema steps (the registry's are in
// schema_migrations). Each Append runs in one BEGIN IMMEDIATE transaction
// that reads the head, inserts the entries and moves the head, so
// appenders in several processes (the CLI and the gateway) still build one
// linear chain.
//
// # The hash
//
// An entry's hash is SHA-256 over this byte string, with every integer
// big-endian and every text field as its length (4 bytes) then its bytes:
//
//	"iotgw-audit-v1"   (14 bytes, no length)
//	seq                8 bytes, unsigned
//	at                 8 bytes, signed: Unix time in milliseconds (UTC)
//	actor              len32 || bytes   e.g. "gateway", "cli:alice"
//	device             len32 || bytes   "" when the action concerns no device
//	action             len32 || bytes   e.g. "reject", "device.add"
//	reason             len32 || bytes   the rejection reason code, or ""
//	message_id         len32 || bytes   "" when none
//	count              8 bytes, signed: how many events the entry folds (≥ 1)
//	prev_hash          32 bytes: the previous entry's hash; 32 zero bytes for seq 1
//
// Length prefixes make the encoding unambiguous (no two field lists give
// the same bytes), and the seq inside it ties each hash to its position.
// Hashes are stored as 64 lowercase hex characters.
//
// # What Verify detects, and what it cannot
//
// Verify recomputes every hash and checks that seqs run 1, 2, 3, ... and
// that each prev_hash is the previous entry's hash, then that audit_head
// names the last entry. It names the first broken entry for: an edited
// row (its hash no longer matches), a deleted row (a gap in seq, or the
// first seq is not 1), an inserted row (its prev_hash or the next one's
// does not match), and deleting the newest rows (the head names an entry
// that is gone). It cannot detect someone with write access to the file
// who rewrites the chain consistently from some entry on (recomputing the
// hashes and moving the head): the scheme has no secret. Only an anchor
// kept elsewhere can catch that: `iotgw audit verify` prints the head as
// SEQ:HASH, and `iotgw audit verify --anchor SEQ:HASH` (CheckAnchor)
// checks later that the entry is still there with that hash, which
// catches a rewrite of everything up to it (not of entries after it). Entries never hold secrets: only ids, reason codes and
// counts.
package audit
