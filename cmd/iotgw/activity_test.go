package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/audit"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
)

// TestDeviceActivity: audit tail filters by --device, --reason and
// --since; device show adds the device's last rejection, its rejections
// by reason, and whether it is rate-limited or quarantined now.
func TestDeviceActivity(t *testing.T) {
	db := filepath.Join(t.TempDir(), "registry.db")
	for _, id := range []string{"act_1", "act_2"} {
		if r := runCLI(t, "", "device", "add", id, "--db", db); r.code != 0 {
			t.Fatalf("device add: %v", r.err)
		}
	}
	l, err := audit.Open(context.Background(), db, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	old := now.Add(-48 * time.Hour)
	if err := l.Append(context.Background(),
		&audit.Entry{At: old, Actor: "gateway", Device: "act_1", Action: "reject", Reason: "stale", Count: 9},
		&audit.Entry{At: now.Add(-10 * time.Minute), Actor: "gateway", Device: "act_1", Action: "reject", Reason: "bad_signature", Count: 4},
		&audit.Entry{At: now.Add(-9 * time.Minute), Actor: "gateway", Device: "act_2", Action: "reject", Reason: "bad_signature"},
		&audit.Entry{At: now.Add(-8 * time.Minute), Actor: "gateway", Device: "act_1", Action: "quarantine", Reason: "bad_signature", Count: 5},
		&audit.Entry{At: now.Add(-10 * time.Second), Actor: "gateway", Device: "act_1", Action: "reject", Reason: "rate_limited", Count: 30},
	); err != nil {
		t.Fatal(err)
	}
	l.Close()
	// act_1 has one message on record in the outbox (outbox.path from the
	// environment): device show gives when it was accepted.
	ob := filepath.Join(t.TempDir(), "outbox.db")
	t.Setenv("IOTGW_OUTBOX_PATH", ob)
	st, err := sqlitestore.Open(context.Background(), outbox.Config{Path: ob, Synchronous: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	acceptedAt := now.Add(-5 * time.Minute).Truncate(time.Second)
	if _, err := st.Commit(context.Background(), []*outbox.Record{{DeviceID: "act_1", MessageID: "m1", Timestamp: fmt.Sprint(acceptedAt.Unix() - 1),
		Payload: []byte(`{}`), ReceivedAt: acceptedAt, Expires: acceptedAt.Add(5 * time.Minute)}}, nil, -1); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if r := runCLI(t, "", "device", "disable", "act_1", "--db", db); r.code != 0 { // what the quarantine did
		t.Fatalf("disable: %v", r.err)
	}

	tail := func(args ...string) []string {
		t.Helper()
		r := runCLI(t, "", append([]string{"audit", "tail", "--db", db}, args...)...)
		if r.code != 0 {
			t.Fatalf("audit tail %v: %v", args, r.err)
		}
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
			f := strings.Fields(line)
			got = append(got, f[3]+"/"+f[4]+"/"+f[5])
		}
		return got
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--device", "act_1", "--reason", "bad_signature"}, "act_1/reject/bad_signature act_1/quarantine/bad_signature"},
		{[]string{"--reason", "bad_signature", "-n", "1"}, "act_1/quarantine/bad_signature"},
		{[]string{"--device", "act_2"}, "act_2/device.add/- act_2/reject/bad_signature"},
		{[]string{"--device", "act_1", "--reason", "stale", "--since", "24h"}, ""},
		{[]string{"--device", "act_1", "--reason", "stale"}, "act_1/reject/stale"},
	} {
		if got := strings.Join(tail(tc.args...), " "); got != tc.want {
			t.Errorf("audit tail %v: %q, want %q", tc.args, got, tc.want)
		}
	}
	if r := runCLI(t, "", "audit", "tail", "--db", db, "--reason", "bad_sig"); r.code != 2 || !strings.Contains(r.err.Error(), "not a reason code") {
		t.Errorf("--reason bad_sig: exit %d %v, want a usage error", r.code, r.err)
	}

	r := runCLI(t, "", "device", "show", "act_1", "--db", db)
	if r.code != 0 {
		t.Fatalf("device show: %v", r.err)
	}
	for _, want := range []string{
		"rejections:     34 (rate_limited 30, bad_signature 4)", // the stale ones are older than --since 24h
		"last rejection: " + now.Add(-10 * time.Second).UTC().Format(time.RFC3339)[:10],
		" rate_limited\n",
		"rate-limited:   yes",
		"quarantined:    yes, since ",
		"last accepted:  " + acceptedAt.UTC().Format(time.RFC3339),
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("device show act_1 lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := runCLI(t, "", "device", "enable", "act_1", "--db", db); r.code != 0 {
		t.Fatal(r.err)
	}
	r = runCLI(t, "", "device", "show", "act_2", "--db", db, "--since", "1h")
	if r.code != 0 || !strings.Contains(r.stdout, "rejections:     1 (bad_signature 1)") || !strings.Contains(r.stdout, "rate-limited:   no") ||
		!strings.Contains(r.stdout, "quarantined:    no") || !strings.Contains(r.stdout, "last accepted:  none on record") {
		t.Errorf("device show act_2:\n%s", r.stdout)
	}
	r = runCLI(t, "", "device", "show", "act_1", "--db", db)
	if !strings.Contains(r.stdout, "quarantined:    not now") {
		t.Errorf("device show act_1 after enable:\n%s", r.stdout)
	}
}
