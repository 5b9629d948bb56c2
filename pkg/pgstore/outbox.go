package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

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
}

// Commit implements outbox.Committer. In one transaction it locks the
// devices' rows (in device order, so concurrent gateways never deadlock),
// refuses records past the fleet-wide quota, inserts the replay ids with
// ON CONFLICT DO NOTHING (an id another gateway committed first is refused
// as a replay: that unique key is the replay authority across gateways),
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
		cand := make([]*outbox.Record, 0, len(recs))
		for _, r := range recs {
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
	rows, err := tx.Query(ctx, `SELECT device_id, next_dseq, pending FROM outbox_device WHERE device_id = ANY($1) ORDER BY device_id FOR UPDATE`, devs)
	if err != nil {
		return nil, fmt.Errorf("lock devices: %w", err)
	}
	defer rows.Close()
	state := make(map[string]*devState, len(devs))
	for rows.Next() {
		var id string
		st := &devState{}
		if err := rows.Scan(&id, &st.next, &st.pending); err != nil {
			return nil, fmt.Errorf("lock devices: %w", err)
		}
		state[id] = st
	}
	return state, rows.Err()
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
		devs[i], ids[i], exp[i] = r.DeviceID, r.ID[:], r.Expires.Unix()
		t, err := strconv.ParseInt(r.Timestamp, 10, 64)
		if err != nil { // cannot happen for a validated message; keep the id longer, not shorter
			t = exp[i]
		}
		ts[i] = t
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

// Claim takes the forwarding lease of up to devices devices that have
// pending rows and no live lease (FOR UPDATE SKIP LOCKED: gateways
// claiming at once take different devices), for lease, and returns up to
// rows of each one's oldest rows, in device then DSeq order. The lease
// clock is the database's, so gateways' clocks do not matter.
func (o *Outbox) Claim(ctx context.Context, owner string, devices, rows int, lease time.Duration) ([]*outbox.Record, error) {
	var out []*outbox.Record
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		r, err := tx.Query(ctx, `WITH c AS (
				SELECT device_id FROM outbox_device
				WHERE pending > 0 AND lease_until < now()
				ORDER BY lease_until LIMIT $2
				FOR UPDATE SKIP LOCKED)
			UPDATE outbox_device d SET lease_owner = $1, lease_until = now() + $3 * interval '1 millisecond'
			FROM c WHERE d.device_id = c.device_id RETURNING d.device_id`, owner, devices, lease.Milliseconds())
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(r, pgx.RowTo[string])
		if err != nil || len(ids) == 0 {
			return err
		}
		out, err = headRows(ctx, tx, ids, rows)
		return err
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
// payloads up to claimPayloadBytes in all.
func headRows(ctx context.Context, tx pgx.Tx, ids []string, n int) ([]*outbox.Record, error) {
	r, err := tx.Query(ctx, `SELECT seq, device_id, dseq, message_id, timestamp,
			CASE WHEN sum(length(payload)) OVER (ORDER BY device_id, dseq) <= $3 THEN payload END, received_at FROM (
			SELECT *, row_number() OVER (PARTITION BY device_id ORDER BY dseq) AS rn FROM outbox WHERE device_id = ANY($1)
		) x WHERE rn <= $2 ORDER BY device_id, dseq`, ids, n, claimPayloadBytes)
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

// Renew extends owner's leases of devs and returns the devices whose lease
// it still holds; a device missing from the answer was taken over (the
// lease ran out and another gateway claimed it).
func (o *Outbox) Renew(ctx context.Context, owner string, devs []string, lease time.Duration) ([]string, error) {
	if len(devs) == 0 {
		return nil, nil
	}
	devs = slices.Sorted(slices.Values(devs))
	r, err := o.db.Pool.Query(ctx, `UPDATE outbox_device d SET lease_until = now() + $3 * interval '1 millisecond'
		FROM (SELECT device_id FROM outbox_device WHERE device_id = ANY($2) AND lease_owner = $1 ORDER BY device_id FOR UPDATE) s
		WHERE d.device_id = s.device_id RETURNING d.device_id`, owner, devs, lease.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("outbox renew leases: %w", err)
	}
	kept, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("outbox renew leases: %w", err)
	}
	return kept, nil
}

// Finish deletes the settled rows done and releases the lease of each
// device in drained (all of whose claimed rows owner has settled),
// notifying OutboxChannel if any of them has rows left, so that every
// gateway may claim its next rows (forwarding spreads over the gateways
// instead of sticking to the first that claimed a device). One
// transaction, so a row is never both deleted late and claimed again by
// another gateway. It locks every device it touches first, in device
// order (as Commit does), so that gateways finishing and committing at
// once cannot deadlock.
func (o *Outbox) Finish(ctx context.Context, owner string, done []*outbox.Record, drained []string) error {
	all := slices.Clone(drained)
	seqs := make([]int64, len(done))
	for i, r := range done {
		all, seqs[i] = append(all, r.DeviceID), r.Seq
	}
	slices.Sort(all)
	all = slices.Compact(all)
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		r, err := tx.Query(ctx, `SELECT device_id, lease_owner FROM outbox_device WHERE device_id = ANY($1) ORDER BY device_id FOR UPDATE`, all)
		if err != nil {
			return err
		}
		owners := map[string]string{}
		for r.Next() {
			var id, ow string
			if err := r.Scan(&id, &ow); err != nil {
				r.Close()
				return err
			}
			owners[id] = ow
		}
		r.Close()
		if err := r.Err(); err != nil {
			return err
		}
		if err := deleteRows(ctx, tx, seqs); err != nil {
			return err
		}
		var held []string
		for _, id := range drained {
			if owners[id] == owner {
				held = append(held, id)
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
		return fmt.Errorf("outbox finish: %w", err)
	}
	return nil
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

// Bury moves row seq to the dead letters.
func (o *Outbox) Bury(ctx context.Context, seq int64, attempts int, lastErr string, now time.Time) error {
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO deadletter(seq, device_id, message_id, timestamp, payload, received_at, attempts, last_error, dead_at)
			SELECT seq, device_id, message_id, timestamp, payload, received_at, $2, $3, $4 FROM outbox WHERE seq = $1
			ON CONFLICT (seq) DO NOTHING`, seq, attempts, lastErr, now.Unix()); err != nil {
			return err
		}
		return deleteRows(ctx, tx, []int64{seq})
	})
	if err != nil {
		return fmt.Errorf("dead-letter: %w", err)
	}
	return nil
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
// outbox.Store.Seen): each gateway loads them into its in-memory window,
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

// PruneSeen deletes ids out of the window at now and raises the horizon
// (see outbox.Store.PruneSeen).
func (o *Outbox) PruneSeen(ctx context.Context, now time.Time, window time.Duration) (int64, error) {
	cut := now.Unix() - int64(window/time.Second)
	var n int64
	err := pgx.BeginFunc(ctx, o.db.Pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM seen WHERE expires < $1 AND ts < $2`, now.Unix(), cut)
		if err != nil {
			return err
		}
		if n = tag.RowsAffected(); n > 0 {
			_, err = tx.Exec(ctx, `UPDATE seen_horizon SET ts = GREATEST(ts, $1) WHERE id = 1`, cut)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune seen: %w", err)
	}
	return n, nil
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
