package main

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	outboxpkg "github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
)

// TestAuditRecordsAdminActions: each admin command leaves one entry by
// cli:<user>; verify passes, then names the entry an edit, a deletion in
// the middle and a deletion at the end broke.
func TestAuditRecordsAdminActions(t *testing.T) {
	db := filepath.Join(t.TempDir(), "registry.db")
	outbox := filepath.Join(t.TempDir(), "outbox.db")
	st, err := sqlitestore.Open(context.Background(), outboxpkg.Config{Path: outbox}) // deadletter refuses a missing outbox
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	add := runCLI(t, "", "device", "add", "sensor_000", "--db", db)
	secret := strings.TrimSpace(add.stdout)
	if add.code != 0 || len(secret) != 64 {
		t.Fatalf("device add: %v %q", add.err, add.stdout)
	}
	for _, args := range [][]string{
		{"device", "remove", "sensor_000", "--db", db},
		{"device", "add", "sensor_001", "--db", db},
		{"device", "disable", "sensor_001", "--db", db},
		{"device", "enable", "sensor_001", "--db", db},
		{"device", "remove", "sensor_001", "--db", db},
		{"deadletter", "drop", "--all", "--outbox", outbox, "--db", db},
	} {
		if r := runCLI(t, "", args...); r.code != 0 {
			t.Fatalf("%v: exit %d: %v %s", args, r.code, r.err, r.stderr)
		}
	}
	r := runCLI(t, "", "audit", "tail", "--db", db, "-n", "10")
	if r.code != 0 {
		t.Fatalf("audit tail: %v", r.err)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	want := []string{"device.add", "device.remove", "device.add", "device.disable", "device.enable", "device.remove", "deadletter.drop"}
	if len(lines) != 1+len(want) {
		t.Fatalf("audit tail printed %d lines, want a header and %d entries:\n%s", len(lines), len(want), r.stdout)
	}
	for i, w := range want {
		if f := strings.Fields(lines[i+1]); len(f) < 7 || f[4] != w || !strings.HasPrefix(f[2], "cli:") {
			t.Fatalf("entry %d = %q, want action %s by cli:<user>", i+1, lines[i+1], w)
		}
	}
	v := runCLI(t, "", "audit", "verify", "--db", db)
	if v.code != 0 || !strings.Contains(v.stdout, "audit chain ok: 7 entries") {
		t.Fatalf("verify: exit %d %v %q", v.code, v.err, v.stdout)
	}
	_, head, _ := strings.Cut(v.stdout, "head ")
	anchor, _, _ := strings.Cut(head, " ")
	if r := runCLI(t, "", "audit", "verify", "--db", db, "--anchor", anchor); r.code != 0 || !strings.HasPrefix(anchor, "7:") {
		t.Fatalf("verify --anchor %s: exit %d %v", anchor, r.code, r.err)
	}
	if r := runCLI(t, "", "audit", "verify", "--db", db, "--anchor", "3:"+strings.Repeat("0", 64)); r.code != 1 || !strings.Contains(r.err.Error(), "rewritten") {
		t.Fatalf("verify with a wrong anchor: exit %d %v", r.code, r.err)
	}
	raw, err := sql.Open("sqlite3", db)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var dump string // every audit column of every row, as text
	if err := raw.QueryRow(`SELECT group_concat(seq || at_ms || actor || device || action || reason || message_id || count || prev_hash || hash, '|') FROM audit_log`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(dump, secret) || strings.Contains(r.stdout, secret) {
		t.Fatal("the generated secret appears in the audit trail")
	}
	for _, tc := range []struct{ sql, want string }{
		{`DELETE FROM audit_log WHERE seq = 7`, "BROKEN at entry 7"},                 // the last one
		{`UPDATE audit_log SET device = 'other' WHERE seq = 2`, "BROKEN at entry 2"}, // an edit
		{`DELETE FROM audit_log WHERE seq = 1`, "BROKEN at entry 2"},                 // first broken is still 2
	} {
		if _, err := raw.Exec(tc.sql); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, "", "audit", "verify", "--db", db)
		if r.code != 1 || !strings.Contains(r.err.Error(), tc.want) {
			t.Fatalf("after %s: verify exit %d, %v; want 1 and %q", tc.sql, r.code, r.err, tc.want)
		}
	}
	if r := runCLI(t, "", "audit", "verify", "--db", filepath.Join(t.TempDir(), "none.db")); r.code != 1 {
		t.Fatalf("verify of a missing registry: exit %d, want 1", r.code)
	}
}
