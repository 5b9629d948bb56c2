package storage

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/audit"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
)

func openPG(t *testing.T) *pgstore.DB {
	t.Helper()
	db, err := pgstore.Open(context.Background(), pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

// gatewayFiles are a stopped SQLite gateway's files, built through the
// real packages.
type gatewayFiles struct {
	registry, outbox string
	pending          []*outbox.Record // still pending, in seq order
	buried           *outbox.Record
	kek              *registry.KEK
}

func msg(dev string, n int, now time.Time) *outbox.Record {
	var id [16]byte
	copy(id[:], fmt.Sprintf("%s-%013d", dev[:2], n))
	return &outbox.Record{DeviceID: dev, MessageID: fmt.Sprintf("%s-m-%d", dev, n), Timestamp: fmt.Sprint(now.Unix()), ID: id,
		Payload: []byte(fmt.Sprintf(`{"n":%d,"dev":%q}`, n, dev)), ReceivedAt: now.Add(time.Duration(n) * time.Millisecond), Expires: now.Add(5 * time.Minute)}
}

func buildGateway(t *testing.T) gatewayFiles {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	g := gatewayFiles{registry: filepath.Join(dir, "iotgw.db"), outbox: filepath.Join(dir, "iotgw-outbox.db")}
	kekHex, err := registry.NewKEKHex()
	if err != nil {
		t.Fatal(err)
	}
	if g.kek, err = registry.ParseKEK(kekHex); err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Open(ctx, g.registry, registry.WithKEK(g.kek))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sensor_a", "sensor_b", "sensor_c"} {
		if err := reg.Add(ctx, id, "secret-of-"+id+"-0123456789"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.Rotate(ctx, "sensor_a", "second-secret-of-sensor_a-0123", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetEnabled(ctx, "sensor_b", false); err != nil {
		t.Fatal(err)
	}
	if err := reg.Revoke(ctx, "sensor_c"); err != nil {
		t.Fatal(err)
	}
	if err := reg.AddDevice(ctx, registry.NewDevice{ID: "meter_d", Secret: "secret-of-meter_d-0123456789", Freshness: registry.FreshnessCounter}); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	al, err := audit.Open(ctx, g.registry, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"device.add", "device.rotate", "device.revoke"} {
		if err := al.Append(ctx, &audit.Entry{Actor: "cli:test", Device: "sensor_a", Action: a}); err != nil {
			t.Fatal(err)
		}
	}
	if err := al.Append(ctx, &audit.Entry{Actor: "gateway", Device: "sensor_b", Action: "reject", Reason: "bad_signature", MessageID: "x", Count: 7}); err != nil {
		t.Fatal(err)
	}
	al.Close()

	st, err := sqlitestore.Open(ctx, outbox.Config{Path: g.outbox})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// One old message whose id is pruned, to move the seen horizon.
	old := msg("sensor_b", 99, now.Add(-time.Hour))
	old.Expires = now.Add(-50 * time.Minute)
	if err := st.Insert(ctx, []*outbox.Record{old}); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, []int64{old.Seq}); err != nil {
		t.Fatal(err)
	}
	if n, err := st.PruneSeen(ctx, now, 10*time.Minute); err != nil || n != 1 {
		t.Fatalf("prune: %d %v", n, err)
	}
	// A counter-mode device whose messages were forwarded: only its bound
	// (9) is left, and it must move with the rest.
	ctrs := []*outbox.Record{
		{DeviceID: "meter_d", MessageID: "c3", Timestamp: outbox.CounterTimestamp([]byte("3")), ID: outbox.CounterID(3), Payload: []byte(`{}`), ReceivedAt: now},
		{DeviceID: "meter_d", MessageID: "c9", Timestamp: outbox.CounterTimestamp([]byte("9")), ID: outbox.CounterID(9), Payload: []byte(`{}`), ReceivedAt: now},
	}
	if err := st.Insert(ctx, ctrs); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, []int64{ctrs[0].Seq, ctrs[1].Seq}); err != nil {
		t.Fatal(err)
	}
	// Two devices' rows interleaved, over two commits.
	var all []*outbox.Record
	for i, dev := range []string{"sensor_a", "sensor_b", "sensor_a", "sensor_a", "sensor_b", "sensor_a"} {
		all = append(all, msg(dev, i, now))
	}
	if err := st.Insert(ctx, all[:3]); err != nil {
		t.Fatal(err)
	}
	if err := st.Insert(ctx, all[3:]); err != nil {
		t.Fatal(err)
	}
	g.buried = all[2]
	if err := st.Bury(ctx, g.buried.Seq, 5, "backend said 500", now); err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if r != g.buried {
			g.pending = append(g.pending, r)
		}
	}
	st.Close()
	return g
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path) //nolint:gosec // G304: a test file
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// dump returns every row of q as one line of text each ([]byte in hex,
// booleans as 0/1), so that a SQLite and a PostgreSQL table compare.
func dump(t *testing.T, rows interface {
	Next() bool
	Err() error
}, scan func(...any) error, ncol int) []string {
	t.Helper()
	var out []string
	for rows.Next() {
		vals := make([]any, ncol)
		ptrs := make([]any, ncol)
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, v := range vals {
			switch v := v.(type) {
			case []byte:
				fmt.Fprintf(&b, "x%x|", v)
			case bool:
				if v {
					b.WriteString("1|")
				} else {
					b.WriteString("0|")
				}
			case nil:
				b.WriteString("NULL|")
			default:
				fmt.Fprintf(&b, "%v|", v)
			}
		}
		out = append(out, b.String())
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func sqliteDump(t *testing.T, path, q string) []string {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	return dump(t, rows, rows.Scan, len(cols))
}

func pgDump(t *testing.T, db *pgstore.DB, q string) []string {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	return dump(t, rows, rows.Scan, len(rows.FieldDescriptions()))
}

// TestMigrateSQLite copies a stopped gateway's files and checks every
// table in PostgreSQL, the per-device order, the replay refusal of every
// copied id, the audit chain, and that the SQLite files were not touched.
func TestMigrateSQLite(t *testing.T) {
	ctx := context.Background()
	g := buildGateway(t)
	before := [2][32]byte{fileHash(t, g.registry), fileHash(t, g.outbox)}
	db := openPG(t)

	n, err := MigrateSQLite(ctx, g.registry, g.outbox, db)
	if err != nil {
		t.Fatal(err)
	}
	want := pgstore.ImportCounts{Devices: 4, DeviceKeys: 5, RegistryMeta: 1, AuditLog: 4, AuditHead: 1,
		Outbox: 5, OutboxDevices: 2, DeadLetters: 1, Seen: 6, SeenHorizon: 1, CounterBounds: 1}
	if n != want {
		t.Fatalf("counts %+v\nwant   %+v", n, want)
	}
	if after := [2][32]byte{fileHash(t, g.registry), fileHash(t, g.outbox)}; after != before {
		t.Fatal("the SQLite files changed")
	}
	unlock, err := sqlitestore.Lock(g.outbox)
	if err != nil {
		t.Fatalf("the outbox lock was not released: %v", err)
	}
	unlock()

	// Tables copied exactly (booleans 0/1 on SQLite, BOOLEAN here).
	for _, tc := range []struct{ table, sqlite, pg string }{
		{"devices", `SELECT device_id, enabled, created_at, revoked_at, freshness FROM devices ORDER BY device_id`, ""},
		{"counter_bound", `SELECT device_id, bound FROM counter_bound ORDER BY device_id`,
			`SELECT device_id, counter_bound FROM outbox_device WHERE counter_bound > 0 ORDER BY device_id`},
		{"device_keys", `SELECT device_id, key_id, CAST(secret AS BLOB), sealed, created_at, expires_at FROM device_keys ORDER BY device_id, key_id`,
			`SELECT device_id, key_id, secret, sealed, created_at, expires_at FROM device_keys ORDER BY device_id, key_id`},
		{"registry_meta", `SELECT name, value FROM registry_meta ORDER BY name`, ""},
		{"audit_log", `SELECT seq, at_ms, actor, device, action, reason, message_id, count, prev_hash, hash FROM audit_log ORDER BY seq`, ""},
		{"audit_head", `SELECT id, seq, hash FROM audit_head`, ""},
		{"seen", `SELECT DISTINCT device_id, message_id, expires, ts FROM seen ORDER BY device_id, message_id`, ""},
		{"seen_horizon", `SELECT id, ts FROM seen_horizon`, ""},
	} {
		pgq := tc.pg
		if pgq == "" {
			pgq = tc.sqlite
		}
		file := g.registry
		if strings.HasPrefix(tc.table, "seen") || tc.table == "counter_bound" {
			file = g.outbox
		}
		src := sqliteDump(t, file, tc.sqlite)
		if got := pgDump(t, db, pgq); !slices.Equal(got, src) || len(src) == 0 {
			t.Errorf("%s:\n got %q\nwant %q", tc.table, got, src)
		}
	}
	// The fingerprint is the KEK's, and the secrets are still sealed.
	if fp := pgDump(t, db, `SELECT value FROM registry_meta WHERE name = 'kek_fingerprint'`); len(fp) != 1 || fp[0] != g.kek.Fingerprint()+"|" {
		t.Errorf("kek_fingerprint %q", fp)
	}
	for _, row := range pgDump(t, db, `SELECT secret, sealed FROM device_keys`) {
		if strings.Contains(row, hex.EncodeToString([]byte("secret-of-"))) || !strings.HasSuffix(row, "|1|") {
			t.Errorf("key row %s: not sealed", row)
		}
	}
	// The audit chain verifies from the copied rows, head included.
	var prev [32]byte
	rows, err := db.Pool.Query(ctx, `SELECT seq, at_ms, actor, device, action, reason, message_id, count, prev_hash, hash FROM audit_log ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	var last string
	for rows.Next() {
		var e audit.Entry
		var at int64
		var ph, h string
		if err := rows.Scan(&e.Seq, &at, &e.Actor, &e.Device, &e.Action, &e.Reason, &e.MessageID, &e.Count, &ph, &h); err != nil {
			t.Fatal(err)
		}
		e.At, e.PrevHash = time.UnixMilli(at), prev
		if ph != hex.EncodeToString(prev[:]) {
			t.Fatalf("entry %d: prev_hash %s", e.Seq, ph)
		}
		prev = audit.Hash(&e)
		if h != hex.EncodeToString(prev[:]) {
			t.Fatalf("entry %d: hash %s, recomputed %x", e.Seq, h, prev)
		}
		last = fmt.Sprintf("1|%d|%s|", e.Seq, h)
	}
	rows.Close()
	if head := pgDump(t, db, `SELECT id, seq, hash FROM audit_head`); len(head) != 1 || head[0] != last {
		t.Fatalf("audit_head %q, want %q", head, last)
	}

	// Pending rows: each device's in its old order, numbered 1..n, with
	// receive times, timestamps and payloads kept.
	var wantRows []string
	counts := map[string]int{}
	for _, r := range g.pending {
		counts[r.DeviceID]++
		wantRows = append(wantRows, fmt.Sprintf("%s|%d|%s|%s|x%x|%d|", r.DeviceID, counts[r.DeviceID], r.MessageID, r.Timestamp, r.Payload, r.ReceivedAt.UnixMilli()))
	}
	gotRows := pgDump(t, db, `SELECT device_id, dseq, message_id, timestamp, payload, received_at FROM outbox ORDER BY seq`)
	if !slices.Equal(gotRows, wantRows) {
		t.Fatalf("outbox:\n got %q\nwant %q", gotRows, wantRows)
	}
	if dev := pgDump(t, db, `SELECT device_id, next_dseq, pending FROM outbox_device ORDER BY device_id`); !slices.Equal(dev, []string{"meter_d|0|0|", "sensor_a|3|3|", "sensor_b|2|2|"}) {
		t.Fatalf("outbox_device %q", dev)
	}
	dead := sqliteDump(t, g.outbox, `SELECT seq, device_id, message_id, timestamp, payload, received_at, attempts, last_error, dead_at FROM deadletter`)
	if got := pgDump(t, db, `SELECT seq, device_id, message_id, timestamp, payload, received_at, attempts, last_error, dead_at FROM deadletter`); !slices.Equal(got, dead) || len(dead) != 1 {
		t.Fatalf("deadletter %q, want %q", got, dead)
	}

	// Every copied id is a replay on PostgreSQL: pending, buried and pruned-from-outbox alike.
	o := db.Outbox(0)
	for _, r := range append(slices.Clone(g.pending), g.buried) {
		again := *r
		res, err := o.Commit(ctx, []*outbox.Record{&again}, nil, 0)
		if err != nil || len(res.Refused) != 1 || res.Refused[0].Quota {
			t.Fatalf("replay of copied %s: refused %+v, %v", r.MessageID, res.Refused, err)
		}
	}
	// A new message follows each device's copied rows, and a copied row
	// buried now does not collide with the copied dead letter's seq.
	fresh := msg("sensor_a", 1000, time.Now())
	if res, err := o.Commit(ctx, []*outbox.Record{fresh}, nil, 0); err != nil || len(res.Refused) != 0 || fresh.DSeq != 4 {
		t.Fatalf("fresh commit: %+v %v dseq %d", res.Refused, err, fresh.DSeq)
	}
	if fresh.Seq <= g.pending[len(g.pending)-1].Seq {
		t.Fatalf("fresh seq %d is not above the old outbox's %d", fresh.Seq, g.pending[len(g.pending)-1].Seq)
	}
	meta, err := o.PendingMeta(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range meta {
		if err := o.Bury(ctx, m.Seq, 1, "x", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if dl, err := o.DeadLetters(ctx); err != nil || len(dl) != 1+len(meta) {
		t.Fatalf("dead letters after burying %d rows: %d, %v", len(meta), len(dl), err)
	}
}

// TestMigrateSQLiteRefusesRunningGateway: while a gateway holds the
// outbox lock, nothing is copied and the error says who holds it.
func TestMigrateSQLiteRefusesRunningGateway(t *testing.T) {
	ctx := context.Background()
	g := buildGateway(t)
	db := openPG(t)
	unlock, err := sqlitestore.Lock(g.outbox)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	_, err = MigrateSQLite(ctx, g.registry, g.outbox, db)
	if !errors.Is(err, sqlitestore.ErrLocked) || !strings.HasPrefix(err.Error(), "outbox.path: ") ||
		!strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) || !strings.HasSuffix(err.Error(), ": stop it first") {
		t.Fatalf("err = %v", err)
	}
	if got := pgDump(t, db, `SELECT (SELECT COUNT(*) FROM devices) + (SELECT COUNT(*) FROM outbox)`); got[0] != "0|" {
		t.Fatalf("rows copied while locked: %v", got)
	}
}

// TestMigrateSQLiteRefusesNonEmpty: a database with devices or outbox rows
// is refused, and left as it was.
func TestMigrateSQLiteRefusesNonEmpty(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, table string
		fill        func(*pgstore.DB) error
	}{
		{"a device", "devices", func(db *pgstore.DB) error {
			_, err := db.Pool.Exec(ctx, `INSERT INTO devices(device_id, created_at) VALUES ('other', 1)`)
			return err
		}},
		{"an outbox row", "outbox", func(db *pgstore.DB) error {
			_, err := db.Outbox(0).Commit(ctx, []*outbox.Record{msg("other", 1, time.Now())}, nil, 0)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := buildGateway(t)
			db := openPG(t)
			if err := tc.fill(db); err != nil {
				t.Fatal(err)
			}
			before := pgDump(t, db, `SELECT (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM seen)`)
			_, err := MigrateSQLite(ctx, g.registry, g.outbox, db)
			if !errors.Is(err, pgstore.ErrNotEmpty) || !strings.Contains(err.Error(), "table "+tc.table) {
				t.Fatalf("err = %v", err)
			}
			if after := pgDump(t, db, `SELECT (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM seen)`); !slices.Equal(after, before) {
				t.Fatalf("rows %v, before %v", after, before)
			}
		})
	}
	// A second run after a successful one is refused too.
	g := buildGateway(t)
	db := openPG(t)
	if _, err := MigrateSQLite(ctx, g.registry, g.outbox, db); err != nil {
		t.Fatal(err)
	}
	if _, err := MigrateSQLite(ctx, g.registry, g.outbox, db); !errors.Is(err, pgstore.ErrNotEmpty) {
		t.Fatalf("second run: %v", err)
	}
}

// TestMigrateSQLiteFiles: missing files and old schemas are named, and
// never created or upgraded.
func TestMigrateSQLiteFiles(t *testing.T) {
	ctx := context.Background()
	db := openPG(t)
	g := buildGateway(t)
	missing := filepath.Join(t.TempDir(), "none.db")
	if _, err := MigrateSQLite(ctx, missing, g.outbox, db); err == nil || !strings.HasPrefix(err.Error(), "registry.path: ") {
		t.Fatalf("missing registry: %v", err)
	}
	if _, err := MigrateSQLite(ctx, g.registry, missing, db); err == nil || !strings.HasPrefix(err.Error(), "outbox.path: ") {
		t.Fatalf("missing outbox: %v", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a missing file was created")
	}
	for _, swap := range [][2]string{{g.outbox, g.outbox}, {g.registry, g.registry}} {
		if _, err := MigrateSQLite(ctx, swap[0], swap[1], db); err == nil || !strings.Contains(err.Error(), "is not an iotgw") {
			t.Fatalf("registry %s, outbox %s: %v", swap[0], swap[1], err)
		}
	}
	raw, err := sql.Open("sqlite3", g.outbox)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`DELETE FROM schema_migrations WHERE version >= 3`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if _, err := MigrateSQLite(ctx, g.registry, g.outbox, db); err == nil || !strings.Contains(err.Error(), "outbox schema version 2, older than 5") {
		t.Fatalf("old outbox: %v", err)
	}
}
