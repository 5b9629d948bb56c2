package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	leasepkg "github.com/iotgw/iotgw/pkg/lease"
	"github.com/iotgw/iotgw/pkg/outbox"
)

// OutboxChannel is notified once by every commit that adds rows, so that
// idle forwarders on every gateway claim them at once.
const OutboxChannel = "iotgw_outbox"

// Outbox is the shared outbox: accepted messages, their replay ids, the
// per-device forwarding leases and the dead letters. Every method is one
// transaction; a gateway never holds state about a row that another
// gateway could not rebuild from the database.
type Outbox struct {
	db    *DB
	quota int64 // outbox.max_pending_per_device, 0 = off
}

// Outbox returns the shared outbox. quota bounds each device's pending
// rows fleet-wide (0: no bound).
func (db *DB) Outbox(quota int) *Outbox { return &Outbox{db: db, quota: int64(quota)} }

type devState struct {
	next, pending int64
	taken         int64 // rows of this commit so far
	bound         int64 // counter_bound, raised by this commit's counter-mode rows
	minKey        int64 // counter_min_key: the reset floor
	raised        bool
}

// Commit implements outbox.Committer. In one transaction it locks the
// devices' rows (in device order, so concurrent gateways never deadlock),
// refuses records past the fleet-wide quota, inserts the replay ids with
// ON CONFLICT DO NOTHING (an id another gateway committed first is refused
// as a replay: that unique key is the replay authority across gateways),
// refuses as well any record timestamped at or below the replay horizon
// (its id may have been pruned, so a copy cannot be told from a new
// message; see PruneSeen),
// inserts the winners' outbox rows with their per-device sequence, and
// notifies OutboxChannel. dels is ignored: shared rows are deleted by
// Finish, which also hands on the lease.
func (o *Outbox) Commit(ctx context.Context, recs []*outbox.Record, _ []int64, _ int64) (outbox.Result, error) {
	var res outbox.Result
	if len(recs) == 0 {
		return res, nil
	}
	devs := devicesOf(recs)
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		res = outbox.Result{}
		state, err := lockDevices(ctx, tx, devs)
		if err != nil {
			return err
		}
		horizon, err := lockHorizon(ctx, tx, "pg_advisory_xact_lock_shared")
		if err != nil {
			return err
		}
		cand := make([]*outbox.Record, 0, len(recs))
		var counted []*outbox.Record // counter-mode rows that raised their device's bound
		for _, r := range recs {
			if c, ok := r.Counter(); ok {
				// Counter mode: the bound, read under the device row's
				// lock, is the replay authority; no seen row, no horizon.
				st := state[r.DeviceID]
				if c <= st.bound || r.KeyID < st.minKey {
					res.Refused = append(res.Refused, outbox.Refusal{Rec: r, Counter: true})
					continue
				}
				if o.quota > 0 && st.pending+st.taken >= o.quota {
					res.Refused = append(res.Refused, outbox.Refusal{Rec: r, Quota: true})
					continue
				}
				st.taken++
				st.bound, st.raised = c, true
				counted = append(counted, r)
				continue
			}
			if recordTS(r) <= horizon { // its id may have been pruned: a copy cannot be told from a new message
				res.Refused = append(res.Refused, outbox.Refusal{Rec: r, Old: true})
				continue
			}
			st := state[r.DeviceID]
			if o.quota > 0 && st.pending+st.taken >= o.quota {
				res.Refused = append(res.Refused, outbox.Refusal{Rec: r, Quota: true})
				continue
			}
			st.taken++
			cand = append(cand, r)
		}
		won, err := insertSeen(ctx, tx, cand)
		if err != nil {
			return err
		}
		rows := cand[:0:0]
		for _, r := range cand {
			if !won[seenKey(r.DeviceID, r.ID)] {
				res.Refused = append(res.Refused, outbox.Refusal{Rec: r})
				state[r.DeviceID].taken--
				continue
			}
			rows = append(rows, r)
		}
		if len(counted) > 0 {
			if err := raiseBounds(ctx, tx, state); err != nil {
				return err
			}
			rows = inOrder(recs, rows, counted)
		}
		return insertRows(ctx, tx, rows, state)
	})
	if err != nil {
		return outbox.Result{}, fmt.Errorf("outbox commit: %w", err)
	}
	return res, nil
}

// Pending implements outbox.Committer: shared rows are claimed (Claim),
// never pushed to one gateway.
func (o *Outbox) Pending(context.Context, int64) ([]*outbox.Record, error) { return nil, nil }

// devicesOf returns the distinct devices of recs, sorted (the lock order).
func devicesOf(recs []*outbox.Record) []string {
	devs := make([]string, 0, 8)
	for _, r := range recs {
		devs = append(devs, r.DeviceID)
	}
	slices.Sort(devs)
	return slices.Compact(devs)
}

// lockDevices creates the devices' rows if missing and locks them, in
// device order; devs must be sorted.
func lockDevices(ctx context.Context, tx pgx.Tx, devs []string) (map[string]*devState, error) {
	if _, err := tx.Exec(ctx, `INSERT INTO outbox_device(device_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`, devs); err != nil {
		return nil, fmt.Errorf("device rows: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT device_id, next_dseq, pending, counter_bound, counter_min_key FROM outbox_device WHERE device_id = ANY($1) ORDER BY device_id FOR UPDATE`, devs)
	if err != nil {
		return nil, fmt.Errorf("lock devices: %w", err)
	}
	defer rows.Close()
	state := make(map[string]*devState, len(devs))
	for rows.Next() {
		var id string
		st := &devState{}
		if err := rows.Scan(&id, &st.next, &st.pending, &st.bound, &st.minKey); err != nil {
			return nil, fmt.Errorf("lock devices: %w", err)
		}
		state[id] = st
	}
	return state, rows.Err()
}

// raiseBounds writes the counter bounds this commit raised.
func raiseBounds(ctx context.Context, tx pgx.Tx, state map[string]*devState) error {
	var ids []string
	var bounds []int64
	for id, st := range state {
		if st.raised {
			ids, bounds = append(ids, id), append(bounds, st.bound)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE outbox_device d SET counter_bound = u.b
		FROM unnest($1::text[], $2::int8[]) AS u(id, b) WHERE d.device_id = u.id`, ids, bounds); err != nil {
		return fmt.Errorf("raise counter bounds: %w", err)
	}
	return nil
}

// inOrder returns the records of a and b (both subsequences of all) in
// all's order, so that a device's rows get their sequence in the order
// the gateway accepted them.
func inOrder(all, a, b []*outbox.Record) []*outbox.Record {
	in := make(map[*outbox.Record]bool, len(a)+len(b))
	for _, r := range a {
		in[r] = true
	}
	for _, r := range b {
		in[r] = true
	}
	out := make([]*outbox.Record, 0, len(in))
	for _, r := range all {
		if in[r] {
			out = append(out, r)
		}
	}
	return out
}

// CounterBound returns the highest counter accepted from device id (0 when
// none was).
func (o *Outbox) CounterBound(ctx context.Context, id string) (int64, error) {
	var b int64
	err := o.db.Pool.QueryRow(ctx, `SELECT counter_bound FROM outbox_device WHERE device_id = $1`, id).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("counter bound: %w", err)
	}
	return b, nil
}

// ResetCounter sets device id's bound back to 0 and its reset floor to
// minKey, the key the reset issued (iotgw device reset-counter), under its
// row's lock, and returns the bound it had.
func (o *Outbox) ResetCounter(ctx context.Context, id string, minKey int64) (int64, error) {
	var old int64
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO outbox_device(device_id) VALUES ($1) ON CONFLICT DO NOTHING`, id); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT counter_bound FROM outbox_device WHERE device_id = $1 FOR UPDATE`, id).Scan(&old); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE outbox_device SET counter_bound = 0, counter_min_key = $2 WHERE device_id = $1`, id, minKey)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("reset counter: %w", err)
	}
	return old, nil
}

// recordTS is r's timestamp in Unix seconds; for a record whose timestamp
// does not parse (cannot happen for a validated message) its expiry,
// which keeps the id longer, not shorter.
func recordTS(r *outbox.Record) int64 {
	t, err := strconv.ParseInt(r.Timestamp, 10, 64)
	if err != nil {
		return r.Expires.Unix()
	}
	return t
}

// horizonLock is the advisory lock (in lockSpace) that orders commits
// (shared) against pruning (exclusive): a prune that raised the horizon
// and deleted ids below it is either wholly before a commit, which then
// sees the raised horizon, or wholly after it, and then the committed id
// is in the seen table before the prune looks.
const horizonLock = 1

// lockHorizon takes the horizon lock with fn (the shared or the exclusive
// transaction-scoped advisory lock) and returns the horizon.
func lockHorizon(ctx context.Context, tx pgx.Tx, fn string) (int64, error) {
	if _, err := tx.Exec(ctx, `SELECT `+fn+`($1, $2)`, lockSpace, horizonLock); err != nil { //nolint:gosec // G202: fn is one of two constants
		return 0, fmt.Errorf("horizon lock: %w", err)
	}
	var h int64
	if err := tx.QueryRow(ctx, `SELECT ts FROM seen_horizon WHERE id = 1`).Scan(&h); err != nil {
		return 0, fmt.Errorf("load seen horizon: %w", err)
	}
	return h, nil
}

func seenKey(dev string, id [16]byte) string { return dev + "\x00" + string(id[:]) }

// insertSeen inserts the ids of recs and returns those this transaction
// inserted (the others were committed before, by any gateway).
func insertSeen(ctx context.Context, tx pgx.Tx, recs []*outbox.Record) (map[string]bool, error) {
	won := make(map[string]bool, len(recs))
	if len(recs) == 0 {
		return won, nil
	}
	devs := make([]string, len(recs))
	ids := make([][]byte, len(recs))
	exp := make([]int64, len(recs))
	ts := make([]int64, len(recs))
	for i, r := range recs {
		devs[i], ids[i], exp[i], ts[i] = r.DeviceID, r.ID[:], r.Expires.Unix(), recordTS(r)
	}
	rows, err := tx.Query(ctx, `INSERT INTO seen(device_id, message_id, expires, ts)
		SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::int8[])
		ON CONFLICT DO NOTHING RETURNING device_id, message_id`, devs, ids, exp, ts)
	if err != nil {
		return nil, fmt.Errorf("insert seen: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var dev string
		var id []byte
		if err := rows.Scan(&dev, &id); err != nil {
			return nil, fmt.Errorf("insert seen: %w", err)
		}
		var k [16]byte
		copy(k[:], id)
		won[seenKey(dev, k)] = true
	}
	return won, rows.Err()
}

// insertRows inserts recs as outbox rows, giving each the next sequence of
// its device (state, from lockDevices, whose locks this transaction holds),
// sets Seq and DSeq, moves the devices' counters and notifies
// OutboxChannel.
func insertRows(ctx context.Context, tx pgx.Tx, recs []*outbox.Record, state map[string]*devState) error {
	if len(recs) == 0 {
		return nil
	}
	n := len(recs)
	devs, mids, tss := make([]string, n), make([]string, n), make([]string, n)
	dseqs, rcv := make([]int64, n), make([]int64, n)
	pays := make([][]byte, n)
	added := map[string]int64{}
	for i, r := range recs {
		st := state[r.DeviceID]
		st.next++
		r.DSeq = st.next
		added[r.DeviceID]++
		devs[i], mids[i], tss[i], dseqs[i], pays[i], rcv[i] = r.DeviceID, r.MessageID, r.Timestamp, r.DSeq, r.Payload, r.ReceivedAt.UnixMilli()
	}
	rows, err := tx.Query(ctx, `INSERT INTO outbox(device_id, dseq, message_id, timestamp, payload, received_at)
		SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::bytea[], $6::int8[])
		RETURNING seq, device_id, dseq`, devs, dseqs, mids, tss, pays, rcv)
	if err != nil {
		return fmt.Errorf("insert outbox: %w", err)
	}
	bySeq := make(map[string]int, n)
	for i, r := range recs {
		bySeq[r.DeviceID+"\x00"+strconv.FormatInt(r.DSeq, 10)] = i
	}
	for rows.Next() {
		var seq, dseq int64
		var dev string
		if err := rows.Scan(&seq, &dev, &dseq); err != nil {
			rows.Close()
			return fmt.Errorf("insert outbox: %w", err)
		}
		recs[bySeq[dev+"\x00"+strconv.FormatInt(dseq, 10)]].Seq = seq
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("insert outbox: %w", err)
	}
	ids := make([]string, 0, len(added))
	for id := range added {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	nexts, counts := make([]int64, len(ids)), make([]int64, len(ids))
	for i, id := range ids {
		nexts[i], counts[i] = state[id].next, added[id]
	}
	if _, err := tx.Exec(ctx, `UPDATE outbox_device d SET next_dseq = u.n, pending = d.pending + u.c
		FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(id, n, c) WHERE d.device_id = u.id`, ids, nexts, counts); err != nil {
		return fmt.Errorf("device counters: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, OutboxChannel); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// Claim implements lease.Store: it takes the forwarding lease of up to
// devices devices that have pending rows and no live lease (FOR UPDATE
// SKIP LOCKED: gateways claiming at once take different devices), for
// lease, raising each one's epoch, and returns up to rows of each one's
// oldest rows, in device then DSeq order. The lease clock is the
// database's, so gateways' clocks do not matter.
func (o *Outbox) Claim(ctx context.Context, owner string, devices, rows int, lease time.Duration) ([]leasepkg.Claim, error) {
	var out []leasepkg.Claim
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		out = nil
		r, err := tx.Query(ctx, `WITH c AS (
				SELECT device_id FROM outbox_device
				WHERE pending > 0 AND lease_until < now()
				ORDER BY lease_until LIMIT $2
				FOR UPDATE SKIP LOCKED)
			UPDATE outbox_device d SET lease_owner = $1, lease_until = now() + $3 * interval '1 millisecond', lease_epoch = d.lease_epoch + 1
			FROM c WHERE d.device_id = c.device_id RETURNING d.device_id, d.lease_epoch`, owner, devices, lease.Milliseconds())
		if err != nil {
			return err
		}
		leases, err := pgx.CollectRows(r, func(row pgx.CollectableRow) (leasepkg.Lease, error) {
			var l leasepkg.Lease
			err := row.Scan(&l.Device, &l.Epoch)
			return l, err
		})
		if err != nil || len(leases) == 0 {
			return err
		}
		slices.SortFunc(leases, func(a, b leasepkg.Lease) int { return strings.Compare(a.Device, b.Device) })
		ids := make([]string, len(leases))
		for i, l := range leases {
			ids[i] = l.Device
			out = append(out, leasepkg.Claim{Lease: l})
		}
		recs, err := headRows(ctx, tx, ids, rows)
		if err != nil {
			return err
		}
		i := 0
		for _, rec := range recs { // both in device order
			for out[i].Device != rec.DeviceID {
				i++
			}
			out[i].Rows = append(out[i].Rows, rec)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("outbox claim: %w", err)
	}
	return out, nil
}

// claimPayloadBytes bounds the payload bytes one claim reads: rows past it
// come without payload, and the dispatcher reads each back (Payload) when
// it posts it, so a claim of many large rows cannot fill memory.
const claimPayloadBytes = 8 << 20

// headRows returns up to n of the oldest rows of each device in ids, with
// payloads up to claimPayloadBytes in all. Each device's rows are read
// through the (device_id, dseq) key with a LIMIT: a claim reads at most n
// rows per device however deep its backlog. (Numbering all of a device's
// rows with a window and keeping the first n read and sorted its whole
// backlog on every claim: under an unpaced load that was a third of
// PostgreSQL's CPU.)
func headRows(ctx context.Context, tx pgx.Tx, ids []string, n int) ([]*outbox.Record, error) {
	r, err := tx.Query(ctx, `SELECT seq, device_id, dseq, message_id, timestamp,
			CASE WHEN sum(length(payload)) OVER (ORDER BY device_id, dseq) <= $3 THEN payload END, received_at
		FROM unnest($1::text[]) AS d(id) CROSS JOIN LATERAL (
			SELECT * FROM outbox o WHERE o.device_id = d.id ORDER BY o.dseq LIMIT $2) x
		ORDER BY device_id, dseq`, ids, n, claimPayloadBytes)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out []*outbox.Record
	for r.Next() {
		rec := &outbox.Record{}
		var ms int64
		if err := r.Scan(&rec.Seq, &rec.DeviceID, &rec.DSeq, &rec.MessageID, &rec.Timestamp, &rec.Payload, &ms); err != nil {
			return nil, err
		}
		rec.ReceivedAt = time.UnixMilli(ms)
		out = append(out, rec)
	}
	return out, r.Err()
}

// Renew implements lease.Store: it extends those of leases that owner
// still holds at their epoch and returns them; a lease missing from the
// answer was taken over (it ran out and another gateway claimed it).
func (o *Outbox) Renew(ctx context.Context, owner string, leases []leasepkg.Lease, lease time.Duration) ([]leasepkg.Lease, error) {
	if len(leases) == 0 {
		return nil, nil
	}
	devs, epochs := splitLeases(leases)
	r, err := o.db.Pool.Query(ctx, `UPDATE outbox_device d SET lease_until = now() + $4 * interval '1 millisecond'
		FROM (SELECT o.device_id FROM outbox_device o JOIN unnest($2::text[], $3::int8[]) AS u(id, epoch)
			ON o.device_id = u.id AND o.lease_epoch = u.epoch
			WHERE o.lease_owner = $1 ORDER BY o.device_id FOR UPDATE OF o) s
		WHERE d.device_id = s.device_id RETURNING d.device_id, d.lease_epoch`, owner, devs, epochs, lease.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("outbox renew leases: %w", err)
	}
	kept, err := pgx.CollectRows(r, func(row pgx.CollectableRow) (leasepkg.Lease, error) {
		var l leasepkg.Lease
		err := row.Scan(&l.Device, &l.Epoch)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("outbox renew leases: %w", err)
	}
	return kept, nil
}

// splitLeases returns the devices and epochs of leases, sorted by device
// (the lock order).
func splitLeases(leases []leasepkg.Lease) ([]string, []int64) {
	ls := slices.Clone(leases)
	slices.SortFunc(ls, func(a, b leasepkg.Lease) int { return strings.Compare(a.Device, b.Device) })
	devs, epochs := make([]string, len(ls)), make([]int64, len(ls))
	for i, l := range ls {
		devs[i], epochs[i] = l.Device, l.Epoch
	}
	return devs, epochs
}

// Finish implements lease.Store: it deletes (or, with Dead set, buries)
// the settled rows done and releases the leases drained (all of whose
// claimed rows owner has settled), each only while owner still holds the
// device at that epoch, and returns how many it refused as stale. A
// device released with rows left notifies OutboxChannel, so that every
// gateway may claim its next rows (forwarding spreads over the gateways
// instead of sticking to the first that claimed a device). One
// transaction, so a row is never both deleted late and claimed again by
// another gateway. It locks every device it touches first, in device
// order (as Commit does), so that gateways finishing and committing at
// once cannot deadlock.
func (o *Outbox) Finish(ctx context.Context, owner string, done []leasepkg.Done, drained []leasepkg.Lease) (int, error) {
	all := make([]string, 0, len(done)+len(drained))
	for _, d := range done {
		all = append(all, d.Device)
	}
	for _, l := range drained {
		all = append(all, l.Device)
	}
	slices.Sort(all)
	all = slices.Compact(all)
	var stale int
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		stale = 0
		r, err := tx.Query(ctx, `SELECT device_id, lease_owner, lease_epoch FROM outbox_device WHERE device_id = ANY($1) ORDER BY device_id FOR UPDATE`, all)
		if err != nil {
			return err
		}
		holds := map[leasepkg.Lease]bool{}
		for r.Next() {
			var l leasepkg.Lease
			var ow string
			if err := r.Scan(&l.Device, &ow, &l.Epoch); err != nil {
				r.Close()
				return err
			}
			holds[l] = ow == owner
		}
		r.Close()
		if err := r.Err(); err != nil {
			return err
		}
		var dels []int64
		for _, d := range done {
			switch {
			case !holds[d.Lease]:
				stale++
			case d.Dead != nil:
				if err := buryRow(ctx, tx, d.Seq, d.Dead.Attempts, d.Dead.LastError, d.Dead.At); err != nil {
					return err
				}
			default:
				dels = append(dels, d.Seq)
			}
		}
		if err := deleteRows(ctx, tx, dels); err != nil {
			return err
		}
		var held []string
		for _, l := range drained {
			if holds[l] {
				held = append(held, l.Device)
			} else {
				stale++
			}
		}
		if len(held) == 0 {
			return nil
		}
		var left bool
		if err := tx.QueryRow(ctx, `WITH r AS (
				UPDATE outbox_device SET lease_owner = '', lease_until = '-infinity' WHERE device_id = ANY($1) RETURNING pending)
			SELECT COALESCE(bool_or(pending > 0), false) FROM r`, held).Scan(&left); err != nil {
			return err
		}
		if left {
			_, err = tx.Exec(ctx, `SELECT pg_notify($1, '')`, OutboxChannel)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("outbox finish: %w", err)
	}
	return stale, nil
}

// deleteRows deletes rows and lowers their devices' pending counts (the
// caller holds the devices' locks, or the rows are of one device); rows
// already gone (deleted by a gateway that took a lease over) count nothing.
func deleteRows(ctx context.Context, tx pgx.Tx, seqs []int64) error {
	if len(seqs) == 0 {
		return nil
	}
	r, err := tx.Query(ctx, `DELETE FROM outbox WHERE seq = ANY($1) RETURNING device_id`, seqs)
	if err != nil {
		return err
	}
	gone, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil || len(gone) == 0 {
		return err
	}
	slices.Sort(gone)
	var ids []string
	var counts []int64
	for _, id := range gone {
		if len(ids) > 0 && ids[len(ids)-1] == id {
			counts[len(counts)-1]++
			continue
		}
		ids, counts = append(ids, id), append(counts, 1)
	}
	_, err = tx.Exec(ctx, `UPDATE outbox_device d SET pending = GREATEST(d.pending - u.c, 0)
		FROM unnest($1::text[], $2::int8[]) AS u(id, c) WHERE d.device_id = u.id`, ids, counts)
	return err
}

// Bury moves row seq to the dead letters (the CLI, and tests; a leased
// row is buried by Finish, under its lease).
func (o *Outbox) Bury(ctx context.Context, seq int64, attempts int, lastErr string, now time.Time) error {
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		return buryRow(ctx, tx, seq, attempts, lastErr, now)
	})
	if err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	return nil
}

// buryRow moves row seq to the dead letters within tx.
func buryRow(ctx context.Context, tx pgx.Tx, seq int64, attempts int, lastErr string, now time.Time) error {
	if _, err := tx.Exec(ctx, `INSERT INTO deadletter(seq, device_id, message_id, timestamp, payload, received_at, attempts, last_error, dead_at)
		SELECT seq, device_id, message_id, timestamp, payload, received_at, $2, $3, $4 FROM outbox WHERE seq = $1
		ON CONFLICT (seq) DO NOTHING`, seq, attempts, lastErr, now.Unix()); err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	return deleteRows(ctx, tx, []int64{seq})
}

// LastAccepted returns when device's newest accepted message still on
// record was accepted, by any gateway (see sqlitestore.Store.LastAccepted).
func (o *Outbox) LastAccepted(ctx context.Context, device string) (time.Time, error) {
	var ms, ts *int64
	err := o.db.Pool.QueryRow(ctx, `SELECT (SELECT max(received_at) FROM outbox WHERE device_id = $1), (SELECT max(ts) FROM seen WHERE device_id = $1)`,
		device).Scan(&ms, &ts)
	if err != nil {
		return time.Time{}, fmt.Errorf("last accepted: %w", err)
	}
	var a, b int64
	if ms != nil {
		a = *ms
	}
	if ts != nil {
		b = *ts
	}
	return outbox.LastAccepted(a, b), nil
}

// Payload returns the payload of row seq, or an error wrapping outbox.ErrNoRow.
func (o *Outbox) Payload(ctx context.Context, seq int64) ([]byte, error) {
	var p []byte
	err := o.db.Pool.QueryRow(ctx, `SELECT payload FROM outbox WHERE seq = $1`, seq).Scan(&p)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("outbox row %d: %w", seq, outbox.ErrNoRow)
	}
	if err != nil {
		return nil, fmt.Errorf("load payload: %w", err)
	}
	return p, nil
}

// PendingMeta returns every pending row without payload, oldest first.
func (o *Outbox) PendingMeta(ctx context.Context) ([]*outbox.Record, error) {
	r, err := o.db.Pool.Query(ctx, `SELECT seq, device_id, dseq, message_id, timestamp, received_at FROM outbox ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("load outbox: %w", err)
	}
	defer r.Close()
	var out []*outbox.Record
	for r.Next() {
		rec := &outbox.Record{}
		var ms int64
		if err := r.Scan(&rec.Seq, &rec.DeviceID, &rec.DSeq, &rec.MessageID, &rec.Timestamp, &ms); err != nil {
			return nil, fmt.Errorf("load outbox: %w", err)
		}
		rec.ReceivedAt = time.UnixMilli(ms)
		out = append(out, rec)
	}
	return out, r.Err()
}

// Seen calls fn for every id still inside the replay window at now (see
// sqlitestore.Store.Seen): each gateway loads them into its in-memory window,
// the fast first filter in front of the unique key.
func (o *Outbox) Seen(ctx context.Context, now time.Time, window time.Duration, fn func(deviceID string, id [16]byte, expires time.Time) error) error {
	w := int64(window / time.Second)
	r, err := o.db.Pool.Query(ctx, `SELECT device_id, message_id, GREATEST(expires, ts + $1) FROM seen WHERE expires >= $2 OR ts >= $3`,
		w, now.Unix(), now.Unix()-w)
	if err != nil {
		return fmt.Errorf("load seen: %w", err)
	}
	defer r.Close()
	return outbox.ScanSeen(r, fn)
}

// PruneSeen deletes the ids that left the fleet's freshness window (the
// one every gateway agreed to, FreshnessWindow) by the database's clock,
// whatever the calling gateway's clock and skew (its now and window are
// not used: a gateway with a shorter window, or a clock ahead, pruned ids
// that another gateway would still accept as fresh). In the same
// transaction, under the horizon lock, it raises the horizon to now −
// window, below which Commit refuses every record.
func (o *Outbox) PruneSeen(ctx context.Context, _ time.Time, _ time.Duration) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		if _, err := lockHorizon(ctx, tx, "pg_advisory_xact_lock"); err != nil {
			return err
		}
		var now, cut int64
		err := tx.QueryRow(ctx, `WITH w AS (SELECT floor(extract(epoch FROM now()))::int8 AS now,
				(SELECT max_clock_skew_ms / 1000 FROM fleet WHERE id = 1) AS skew)
			SELECT now, now - skew FROM w WHERE skew IS NOT NULL`).Scan(&now, &cut)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // no gateway has started yet: nothing accepted, nothing to prune
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE seen_horizon SET ts = GREATEST(ts, $1) WHERE id = 1`, cut); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM seen WHERE expires < $1 AND ts < $2`, now, cut)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune seen: %w", err)
	}
	return n, nil
}

// FreshnessWindow makes skew (validation.max_clock_skew) the fleet's
// freshness window when none is set yet, and otherwise fails with a
// *WindowError when the fleet's differs: gateways with different windows
// would prune ids that others still accept (issue 15, finding 1).
func (o *Outbox) FreshnessWindow(ctx context.Context, skew time.Duration) error {
	var fleet int64
	err := o.db.Pool.QueryRow(ctx, `WITH i AS (INSERT INTO fleet(id, max_clock_skew_ms) VALUES (1, $1)
			ON CONFLICT (id) DO NOTHING RETURNING max_clock_skew_ms)
		SELECT max_clock_skew_ms FROM i UNION ALL SELECT max_clock_skew_ms FROM fleet WHERE id = 1`, skew.Milliseconds()).Scan(&fleet)
	if err != nil {
		return fmt.Errorf("freshness window: %w", err)
	}
	if fleet != skew.Milliseconds() {
		return &WindowError{Gateway: skew, Fleet: time.Duration(fleet) * time.Millisecond}
	}
	return nil
}

// SetFreshnessWindow changes the fleet's freshness window (iotgw fleet
// set-skew). Replays stay closed either way: ids are pruned by the new
// window from the next prune on, and Commit refuses every record at or
// below the horizon, which only rises.
func (o *Outbox) SetFreshnessWindow(ctx context.Context, skew time.Duration) (old time.Duration, err error) {
	var prev *int64
	err = pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT max_clock_skew_ms FROM fleet WHERE id = 1 FOR UPDATE`).Scan(&prev); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO fleet(id, max_clock_skew_ms) VALUES (1, $1)
			ON CONFLICT (id) DO UPDATE SET max_clock_skew_ms = EXCLUDED.max_clock_skew_ms`, skew.Milliseconds())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("set freshness window: %w", err)
	}
	if prev == nil {
		return 0, nil
	}
	return time.Duration(*prev) * time.Millisecond, nil
}

// WindowError is a gateway whose validation.max_clock_skew is not the
// fleet's freshness window.
type WindowError struct {
	Gateway, Fleet time.Duration
}

func (e *WindowError) Error() string {
	return fmt.Sprintf("validation.max_clock_skew: this gateway has %s, the fleet sharing storage.dsn has %s; every gateway must use the fleet's (change it for the whole fleet with `iotgw fleet set-skew`)", e.Gateway, e.Fleet)
}

// SeenHorizon returns the timestamp before which ids may have been pruned.
func (o *Outbox) SeenHorizon(ctx context.Context) (time.Time, error) {
	var ts int64
	if err := o.db.Pool.QueryRow(ctx, `SELECT ts FROM seen_horizon WHERE id = 1`).Scan(&ts); err != nil {
		return time.Time{}, fmt.Errorf("load seen horizon: %w", err)
	}
	return time.Unix(ts, 0), nil
}

// Stats reads the oldest pending row's receive time and counts dead letters.
func (o *Outbox) Stats(ctx context.Context) (outbox.Stats, error) {
	var st outbox.Stats
	var ms *int64
	if err := o.db.Pool.QueryRow(ctx, `SELECT (SELECT received_at FROM outbox ORDER BY seq LIMIT 1), (SELECT COUNT(*) FROM deadletter)`).
		Scan(&ms, &st.DeadLetters); err != nil {
		return outbox.Stats{}, fmt.Errorf("outbox stats: %w", err)
	}
	if ms != nil {
		st.Oldest = time.UnixMilli(*ms)
	}
	return st, nil
}

// Count returns how many rows are pending.
func (o *Outbox) Count(ctx context.Context) (int, error) {
	var n int
	err := o.db.Pool.QueryRow(ctx, `SELECT COUNT(*) FROM outbox`).Scan(&n)
	return n, err
}

// DeadLetters lists dead-lettered messages, oldest first.
func (o *Outbox) DeadLetters(ctx context.Context) ([]outbox.Dead, error) {
	r, err := o.db.Pool.Query(ctx, `SELECT seq, device_id, message_id, timestamp, payload, received_at, attempts, last_error, dead_at FROM deadletter ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer r.Close()
	var out []outbox.Dead
	for r.Next() {
		var d outbox.Dead
		var ms, dead int64
		if err := r.Scan(&d.Seq, &d.DeviceID, &d.MessageID, &d.Timestamp, &d.Payload, &ms, &d.Attempts, &d.LastError, &dead); err != nil {
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
		d.ReceivedAt, d.DeadAt = time.UnixMilli(ms), time.Unix(dead, 0)
		out = append(out, d)
	}
	return out, r.Err()
}

// RetryDead moves dead letters (all when seqs is empty) back into the
// outbox as new rows, each at the end of its device's order.
func (o *Outbox) RetryDead(ctx context.Context, seqs []int64) (int, error) {
	return o.deadOp(ctx, seqs, true)
}

// DropDead deletes dead letters for good (all when seqs is empty).
func (o *Outbox) DropDead(ctx context.Context, seqs []int64) (int, error) {
	return o.deadOp(ctx, seqs, false)
}

func (o *Outbox) deadOp(ctx context.Context, seqs []int64, retry bool) (int, error) {
	seqs = append([]int64{}, seqs...) // pgx sends a nil slice as NULL, and cardinality(NULL) = 0 is not true: "all" did nothing
	var n int
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		r, err := tx.Query(ctx, `DELETE FROM deadletter WHERE cardinality($1::int8[]) = 0 OR seq = ANY($1)
			RETURNING seq, device_id, message_id, timestamp, payload`, seqs)
		if err != nil {
			return err
		}
		var recs []*outbox.Record
		for r.Next() {
			rec := &outbox.Record{ReceivedAt: time.Now()}
			if err := r.Scan(&rec.Seq, &rec.DeviceID, &rec.MessageID, &rec.Timestamp, &rec.Payload); err != nil {
				r.Close()
				return err
			}
			recs = append(recs, rec)
		}
		r.Close()
		if err := r.Err(); err != nil {
			return err
		}
		n = len(recs)
		if !retry || n == 0 {
			return nil
		}
		slices.SortFunc(recs, func(a, b *outbox.Record) int { return int(a.Seq - b.Seq) })
		return o.insertLocked(ctx, tx, recs)
	})
	if err != nil {
		return 0, fmt.Errorf("dead letters: %w", err)
	}
	return n, nil
}

// insertLocked locks recs' devices and inserts recs as rows, in order,
// without replay ids (they were recorded when first accepted).
func (o *Outbox) insertLocked(ctx context.Context, tx pgx.Tx, recs []*outbox.Record) error {
	state, err := lockDevices(ctx, tx, devicesOf(recs))
	if err != nil {
		return err
	}
	return insertRows(ctx, tx, recs, state)
}

// Release gives up every lease owner holds (at shutdown, once nothing is
// in flight), so other gateways take the rows over at once.
func (o *Outbox) Release(ctx context.Context, owner string) error {
	_, err := o.db.Pool.Exec(ctx, `UPDATE outbox_device SET lease_owner = '', lease_until = '-infinity'
		WHERE device_id IN (SELECT device_id FROM outbox_device WHERE lease_owner = $1 ORDER BY device_id FOR UPDATE)`, owner)
	if err != nil {
		return fmt.Errorf("outbox release leases: %w", err)
	}
	return nil
}

// Listen calls handlers[channel] on each notification of its channel
// until ctx ends (see the package function Listen: one connection, and a
// call per channel after each reconnect).
func (o *Outbox) Listen(ctx context.Context, handlers map[string]func(), onErr func(error)) {
	chans := make([]string, 0, len(handlers))
	for ch := range handlers {
		chans = append(chans, ch)
	}
	slices.Sort(chans)
	Listen(ctx, o.db, chans, func(ch string) {
		if f := handlers[ch]; f != nil {
			f()
		}
	}, onErr)
}
