package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	outboxpkg "github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
)

func writeMigrateConfig(t *testing.T, dir, engine, dsn, reg, ob string) string {
	t.Helper()
	body := fmt.Sprintf("storage:\n  engine: %s\n", engine)
	if dsn != "" {
		body += fmt.Sprintf("  dsn: %q\n", dsn)
	}
	body += fmt.Sprintf("registry:\n  path: %s\noutbox:\n  path: %s\n", reg, ob)
	p := filepath.Join(dir, "iotgw-"+engine+".yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMigrateCommand runs iotgw migrate on both engines, the copy from a
// SQLite gateway built with the CLI and the outbox package, and its
// refusals; every error is one line and never shows the DSN.
func TestMigrateCommand(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	reg, ob := filepath.Join(dir, "iotgw.db"), filepath.Join(dir, "iotgw-outbox.db")
	dsn := pgtest.New(t)
	pgCfg := writeMigrateConfig(t, dir, "postgres", dsn, reg, ob)
	sqliteCfg := writeMigrateConfig(t, dir, "sqlite", "", reg, ob)
	badCfg := writeMigrateConfig(t, t.TempDir(), "postgres", "postgres://root:hunter2-pw@127.0.0.1:1/none?sslmode=disable&connect_timeout=2", reg, ob)

	// A SQLite gateway with two devices and three pending rows.
	for _, id := range []string{"sensor_001", "sensor_002"} {
		if r := runCLI(t, "", "device", "add", id, "--db", reg); r.code != 0 {
			t.Fatalf("device add: %v", r.err)
		}
	}
	st, err := sqlitestore.Open(ctx, outboxpkg.Config{Path: ob})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var recs []*outboxpkg.Record
	for i := range 3 {
		var id [16]byte
		copy(id[:], fmt.Sprintf("id-%013d", i))
		recs = append(recs, &outboxpkg.Record{DeviceID: "sensor_001", MessageID: fmt.Sprint("m", i), Timestamp: fmt.Sprint(now.Unix()),
			ID: id, Payload: []byte("{}"), ReceivedAt: now, Expires: now.Add(time.Minute)})
	}
	if err := st.Insert(ctx, recs); err != nil {
		t.Fatal(err)
	}
	st.Close()

	for _, tc := range []struct {
		name    string
		args    []string
		code    int
		stdout  []string // substrings of stdout
		errText string
	}{
		{"schema on postgres", []string{"migrate", "--config", pgCfg}, 0, []string{"schema version 4 (latest 4)\n"}, ""},
		{"schema again", []string{"migrate", "--config", pgCfg}, 0, []string{"schema version 4 (latest 4)\n"}, ""},
		{"sqlite", []string{"migrate", "--config", sqliteCfg}, 0, []string{"SQLite files migrate themselves when opened",
			"registry.path " + reg + ": up to date", "outbox.path " + ob + ": up to date"}, ""},
		{"unknown source", []string{"migrate", "--from", "mysql", "--to", "postgres", "--config", pgCfg}, 2, nil, `--from: "mysql" is not an engine migrate copies from (valid: sqlite)`},
		{"unknown target", []string{"migrate", "--from", "sqlite", "--to", "sqlite", "--config", pgCfg}, 2, nil, `(valid: postgres)`},
		{"from alone", []string{"migrate", "--from", "sqlite", "--config", pgCfg}, 2, nil, "--from and --to go together"},
		{"an argument", []string{"migrate", "extra"}, 2, nil, "migrate takes no arguments"},
		{"no dsn", []string{"migrate", "--from", "sqlite", "--to", "postgres", "--config", sqliteCfg}, 1, nil, "storage.dsn: required"},
		{"unreachable postgres", []string{"migrate", "--config", badCfg}, 1, nil, "storage.dsn: postgres: failed to connect"},
		{"unreachable postgres, copy", []string{"migrate", "--from", "sqlite", "--to", "postgres", "--config", badCfg}, 1, nil, "storage.dsn: postgres: failed to connect"},
		{"copy", []string{"migrate", "--from", "sqlite", "--to", "postgres", "--config", pgCfg}, 0, []string{
			"into PostgreSQL (schema version 4):", "devices", "  outbox         3  pending rows of 1 device(s)", "seen           3"}, ""},
		{"copy again", []string{"migrate", "--from", "sqlite", "--to", "postgres", "--config", pgCfg}, 1, nil, "not empty (table devices has 2 rows)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, "", tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d: %v\n%s", r.code, tc.code, r.err, r.stdout)
			}
			for _, s := range tc.stdout {
				if !strings.Contains(r.stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, r.stdout)
				}
			}
			if r.err != nil {
				msg := r.err.Error()
				if tc.errText != "" && !strings.Contains(msg, tc.errText) {
					t.Errorf("error %q lacks %q", msg, tc.errText)
				}
				if strings.Contains(msg, "\n") || strings.Contains(msg, "hunter2") || strings.Contains(msg, dsn) {
					t.Errorf("error is not one line, or shows the DSN: %q", msg)
				}
			}
		})
	}
}

// TestMigrateCommandRefusesRunningGateway: the copy names the outbox and
// the gateway holding it.
func TestMigrateCommandRefusesRunningGateway(t *testing.T) {
	dir := t.TempDir()
	reg, ob := filepath.Join(dir, "iotgw.db"), filepath.Join(dir, "iotgw-outbox.db")
	if r := runCLI(t, "", "device", "add", "sensor_001", "--db", reg); r.code != 0 {
		t.Fatal(r.err)
	}
	st, err := sqlitestore.Open(context.Background(), outboxpkg.Config{Path: ob})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	unlock, err := sqlitestore.Lock(ob)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	cfg := writeMigrateConfig(t, dir, "postgres", pgtest.New(t), reg, ob)
	r := runCLI(t, "", "migrate", "--from", "sqlite", "--to", "postgres", "--config", cfg)
	want := fmt.Sprintf("outbox.path: %s is in use by another gateway (pid %d holds %s.lock): stop it first", ob, os.Getpid(), ob)
	if r.code != 1 || r.err == nil || r.err.Error() != want {
		t.Fatalf("exit %d: %v\nwant %s", r.code, r.err, want)
	}
}
