package test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgAdmin is the machine's PostgreSQL (trust auth); each test makes its
// own database and drops it.
const pgAdmin = "postgres://127.0.0.1:5432/test?sslmode=disable"

// newPGDatabase creates a fresh database and returns its DSN.
func newPGDatabase(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgAdmin)
	if err != nil {
		t.Fatalf("PostgreSQL at 127.0.0.1:5432 (.ci/run starts it): %v", err)
	}
	defer conn.Close(ctx)
	b := make([]byte, 6)
	rand.Read(b) //nolint:errcheck // never fails
	name := "iotgw_e2e_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), pgAdmin)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") //nolint:errcheck // best effort
	})
	return "postgres://127.0.0.1:5432/" + name + "?sslmode=disable"
}

// sharedOpts configures gateway n of a group sharing dsn: its own client
// id, the share group, the postgres engine with a short lease.
func sharedOpts(dsn string, n int) gatewayOpts {
	return gatewayOpts{
		timeout: "2s",
		extra:   fmt.Sprintf("storage:\n  engine: postgres\n  dsn: %q\n  lease: 5s\n", dsn),
		edit: func(cfg string) string {
			return strings.Replace(cfg, "client_id: "+fixtureClientID+"\n",
				fmt.Sprintf("client_id: %s-%d\n  share_group: scale\n", fixtureClientID, n), 1)
		},
	}
}

// publishAll sends per messages from each device, one device per
// goroutine, each waiting for the broker's PUBACK.
func publishAll(t *testing.T, devs []*device, per int) {
	t.Helper()
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				raw, _ := d.signed(fmt.Sprintf(`{"n":%d}`, i), time.Now().Unix())
				tok := d.c.Publish("device/"+d.id+"/data", 1, false, raw)
				if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Errorf("publish %s: %v", d.id, tok.Error())
					return
				}
			}
		}()
	}
	wg.Wait()
}

// checkOnceInOrder checks that reqs hold each of want message ids exactly
// once and that each device's X-Iotgw-Seq only grows, in arrival order.
func checkOnceInOrder(t *testing.T, reqs []recorded, want int) {
	t.Helper()
	seen := map[string]int{}
	last := map[string]int64{}
	for _, r := range reqs {
		seen[r.Header.Get("X-Message-Id")]++
		dev := r.Header.Get("X-Device-Id")
		seq, err := strconv.ParseInt(r.Header.Get("X-Iotgw-Seq"), 10, 64)
		if err != nil {
			t.Fatalf("X-Iotgw-Seq %q: %v", r.Header.Get("X-Iotgw-Seq"), err)
		}
		if seq <= last[dev] {
			t.Errorf("device %s: X-Iotgw-Seq %d after %d: not in commit order", dev, seq, last[dev])
		}
		last[dev] = seq
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	if len(seen) != want || dups != 0 {
		t.Fatalf("backend got %d distinct messages with %d duplicates, want %d and 0", len(seen), dups, want)
	}
}

// TestScaleThreeGateways: three gateways share one Mosquitto (one share
// group) and one PostgreSQL; 3,000 messages from 30 devices are each
// forwarded exactly once, every gateway received a share, no device ever
// had two POSTs in flight, and each device's messages reached the backend
// in commit order (X-Iotgw-Seq).
func TestScaleThreeGateways(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := newPGDatabase(t)
	var ids []string
	for i := range 30 {
		ids = append(ids, fmt.Sprintf("scale-%02d", i))
	}
	f := newFixture(t, ids...)
	// A slow backend makes claims and leases matter: POSTs overlap.
	f.backend.setBehave(func(recorded) (int, string, time.Duration) { return 200, `{"ok":true}`, 2 * time.Millisecond })
	var gws []*gatewayProc
	for n := range 3 {
		gws = append(gws, f.startGateway(sharedOpts(dsn, n)))
	}
	var devs []*device
	for _, id := range ids {
		devs = append(devs, f.device(id))
	}
	publishAll(t, devs, 100)
	reqs := f.backend.waitCount(t, 3000, 90*time.Second)
	time.Sleep(time.Second) // a duplicate would arrive now
	checkOnceInOrder(t, f.backend.requests(), 3000)
	_ = reqs
	for i, g := range gws {
		if got := g.metric("iotgw_messages_received_total"); got == 0 {
			t.Errorf("gateway %d received nothing", i)
		} else {
			t.Logf("gateway %d: received %.0f, claimed %.0f rows", i, got, g.metric("iotgw_rows_claimed_total"))
		}
	}
	f.backend.mu.Lock()
	most := f.backend.maxInflight
	f.backend.mu.Unlock()
	if most != 1 {
		t.Fatalf("a device had %d POSTs in flight at once, want 1", most)
	}
}
