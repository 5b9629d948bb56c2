package test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"

	"github.com/jackc/pgx/v5"
)

// pgAdmin is the PostgreSQL the tests use (IOTGW_TEST_PG, default the
// machine's, trust auth; scripts/postgres.sh makes sure it answers); each
// test makes its own database (pgtest.New) and drops it.
var pgAdmin = cmp.Or(os.Getenv("IOTGW_TEST_PG"), pgtest.Admin)

// sharedOpts configures gateway n of a group sharing dsn: its own client
// id, the share group, the postgres engine with a short lease.
func sharedOpts(dsn string, n int) gatewayOpts {
	return gatewayOpts{
		timeout: "2s",
		extra:   fmt.Sprintf("storage:\n  engine: postgres\n  dsn: %q\n  lease: 5s\n", dsn),
		edit: func(cfg string) string {
			// No local state: the registry and outbox files do not exist.
			cfg = regexp.MustCompile(`(?m)^  path: .*$`).ReplaceAllString(cfg, "  path: /nonexistent/iotgw-unused.db")
			return strings.Replace(cfg, "client_id: "+fixtureClientID+"\n",
				fmt.Sprintf("client_id: %s-%d\n  share_group: scale-test-7c2e91b4\n", fixtureClientID, n), 1)
		},
	}
}

// startShared starts n gateways sharing dsn (sharedOpts 0..n-1) and
// waits until each is ready.
func startShared(f *fixture, dsn string, n int) []*gatewayProc {
	f.t.Helper()
	var gws []*gatewayProc
	for i := range n {
		gws = append(gws, f.startGateway(sharedOpts(dsn, i)))
	}
	return gws
}

// devicesOf connects each of ids as a device.
func devicesOf(f *fixture, ids []string) []*device {
	f.t.Helper()
	var devs []*device
	for _, id := range ids {
		devs = append(devs, f.device(id))
	}
	return devs
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
	dsn := pgtest.New(t)
	var ids []string
	for i := range 30 {
		ids = append(ids, fmt.Sprintf("scale-%02d", i))
	}
	f := newFixture(t, ids...)
	f.usePostgres(dsn)
	// A slow backend makes claims and leases matter: POSTs overlap.
	f.backend.setBehave(func(recorded) (int, string, time.Duration) { return 200, `{"ok":true}`, 2 * time.Millisecond })
	gws := startShared(f, dsn, 3)
	devs := devicesOf(f, ids)
	publishAll(t, devs, 100)
	f.backend.waitCount(t, 3000, 90*time.Second)
	time.Sleep(time.Second) // a duplicate would arrive now
	checkOnceInOrder(t, f.backend.requests(), 3000)
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

// sum adds one series over gateways.
func sum(gws []*gatewayProc, series string) float64 {
	var n float64
	for _, g := range gws {
		n += g.metric(series)
	}
	return n
}

// TestScaleReplayAcrossGateways: a message accepted through one gateway
// is refused by whichever gateway gets a copy later, and ten copies
// published at once, spread over three gateways by the share group, give
// exactly one POST: the unique key on (device, message id), written in the
// commit, lets one win.
func TestScaleReplayAcrossGateways(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := pgtest.New(t)
	f := newFixture(t, "rp-1")
	f.usePostgres(dsn)
	gws := startShared(f, dsn, 3)
	d := f.device("rp-1")
	// 1. Accepted once, then copies: each gateway gets some (share group).
	raw, id := d.signed(`{"x":1}`, time.Now().Unix())
	d.publish("", raw)
	f.backend.waitCount(t, 1, 10*time.Second)
	for range 6 {
		d.publish("", raw)
	}
	// 2. Ten simultaneous copies of a fresh message.
	raw2, id2 := d.signed(`{"x":2}`, time.Now().Unix())
	var toks []interface{ WaitTimeout(time.Duration) bool }
	for range 10 {
		toks = append(toks, d.c.Publish("device/rp-1/data", 1, false, raw2))
	}
	for _, tok := range toks {
		tok.WaitTimeout(5 * time.Second)
	}
	// Every copy is accounted for: 6 + 9 refused (a copy that reached the
	// gateway holding the original in flight is acked with it, counted as
	// redelivered; any other is a replay rejection).
	deadline := time.Now().Add(15 * time.Second)
	var refused float64
	for time.Now().Before(deadline) {
		refused = sum(gws, `iotgw_messages_rejected_total{reason="replay"}`) + sum(gws, "iotgw_redelivered_inflight_total")
		if refused >= 15 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	got := map[string]int{}
	for _, r := range f.backend.requests() {
		got[r.Header.Get("X-Message-Id")]++
	}
	if got[id] != 1 || got[id2] != 1 || len(got) != 2 {
		t.Fatalf("backend got %v, want each of %s and %s once", got, id, id2)
	}
	if refused != 15 {
		t.Fatalf("refused copies = %v, want 15", refused)
	}
	var through []string
	for i, g := range gws {
		through = append(through, fmt.Sprintf("gw%d: received %.0f, replay %.0f", i, g.metric("iotgw_messages_received_total"),
			g.metric(`iotgw_messages_rejected_total{reason="replay"}`)))
	}
	t.Log(strings.Join(through, "; "))
}

// TestScaleKillOneGateway: kill -9 one of three gateways mid-stream and
// never restart it. Its committed rows are forwarded by the others once
// its leases run out; the messages the broker had queued for its
// persistent session are drained by a replacement with its client id and
// no local state. Nothing is lost; the only duplicates are POSTs the dead
// gateway made whose rows it had not yet deleted (the crash window).
func TestScaleKillOneGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := pgtest.New(t)
	var ids []string
	for i := range 10 {
		ids = append(ids, fmt.Sprintf("kill-%02d", i))
	}
	f := newFixture(t, ids...)
	f.usePostgres(dsn)
	// Slow enough that rows pile up in the outbox: the victim holds leases
	// with rows claimed when it dies.
	f.backend.setBehave(func(recorded) (int, string, time.Duration) { return 200, `{"ok":true}`, 20 * time.Millisecond })
	gws := startShared(f, dsn, 3)
	devs := devicesOf(f, ids)
	done := make(chan struct{})
	go func() { publishAll(t, devs, 100); close(done) }()
	victim := gws[1]
	victim.waitMetric("iotgw_leases_held", 1, 20*time.Second)
	held := victim.metric("iotgw_leases_held")
	victim.kill() // SIGKILL
	killedAt := time.Now()
	t.Logf("killed gateway 1 holding about %v leases", held)
	<-done
	// Published after the kill: the broker queues the dead member's turns
	// in its persistent session.
	publishAll(t, devs, 20)
	// The survivors forward everything that was committed, within the lease.
	// The broker keeps the victim's share in its persistent session: start a
	// replacement with its client id (and no outbox or registry state of
	// its own beyond the shared registry) to drain it.
	// Within the lease (5 s) and a claim round, no device with rows left is
	// still leased to the dead gateway; then the survivors drain every
	// committed row.
	time.Sleep(time.Until(killedAt.Add(6500 * time.Millisecond)))
	victimLeases := fmt.Sprintf("SELECT COUNT(*) FROM outbox_device WHERE pending > 0 AND lease_owner LIKE '%s-1@%%'", fixtureClientID)
	if n := pgCount(t, dsn, victimLeases); n != 0 {
		t.Fatalf("%d devices with pending rows still leased to the killed gateway 6.5 s after the kill (lease 5 s)", n)
	}
	for deadline := time.Now().Add(60 * time.Second); pgCount(t, dsn, "SELECT COUNT(*) FROM outbox") != 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d committed rows still pending a minute after the kill", pgCount(t, dsn, "SELECT COUNT(*) FROM outbox"))
		}
	}
	t.Logf("the survivors forwarded every committed row %s after the kill", time.Since(killedAt).Round(100*time.Millisecond))
	before := distinct(f.backend.requests())
	if before >= 1200 {
		t.Fatalf("all %d messages forwarded without the replacement: the broker queued nothing for the dead member (test premise)", before)
	}
	f.startGateway(sharedOpts(dsn, 1))
	f.backend.waitCount(t, 1200, 60*time.Second)
	time.Sleep(2 * time.Second)
	reqs := f.backend.requests()
	seen := map[string]int{}
	first := map[string]time.Time{}
	for _, r := range reqs {
		id := r.Header.Get("X-Message-Id")
		if seen[id]++; seen[id] == 1 {
			first[id] = r.At
		}
	}
	dups := len(reqs) - len(seen)
	t.Logf("distinct messages forwarded before the replacement: %d of 1200; total POSTs %d, distinct %d, duplicates %d", before, len(reqs), len(seen), dups)
	if len(seen) != 1200 {
		t.Fatalf("backend got %d distinct messages, want 1200", len(seen))
	}
	// The crash window: a duplicate is a message first posted before the
	// kill (by the victim: its POST in flight, or settled but its row not
	// yet deleted; a device's next row is posted only after that delete),
	// posted again by the gateway that took its device over: at most one
	// per device.
	for id, n := range seen {
		if n > 1 && first[id].After(killedAt) {
			t.Errorf("message %s posted %d times, first after the kill: not the crash window", id, n)
		}
	}
	if dups > len(ids) {
		for _, r := range reqs {
			if id := r.Header.Get("X-Message-Id"); seen[id] > 1 {
				t.Logf("dup %s seq %s at %s (kill %s)", r.Header.Get("X-Device-Id"), r.Header.Get("X-Iotgw-Seq"), r.At.Format("05.000"), killedAt.Format("05.000"))
			}
		}
		b, _ := os.ReadFile(victim.logPath)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"level":"error"`) || strings.Contains(l, `"level":"warn"`) {
				t.Log(l)
			}
		}
		t.Fatalf("%d duplicates, more than one per device", dups)
	}
}

// pgCluster runs pg_ctlcluster on the machine's one cluster (stop, start,
// restart). Only the tests in this package touch the cluster, and they run
// one at a time.
func pgCluster(t *testing.T, action string) {
	t.Helper()
	vers, err := filepath.Glob("/etc/postgresql/*")
	if err != nil || len(vers) != 1 {
		t.Fatalf("want one PostgreSQL version under /etc/postgresql, got %v (%v)", vers, err)
	}
	out, err := exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", filepath.Base(vers[0]), "main", action, "-m", "fast").CombinedOutput()
	if err != nil && action != "start" {
		t.Fatalf("pg_ctlcluster %s: %v\n%s", action, err, out)
	}
	if action == "stop" {
		return
	}
	for range 100 {
		if c, err := pgx.Connect(context.Background(), pgAdmin); err == nil {
			c.Close(context.Background())
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("PostgreSQL did not come back after %s", action)
}

// readyz returns the gateway's /readyz status and body.
func (g *gatewayProc) readyz() (int, string) {
	resp, err := httpClient.Get("http://" + g.http + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestScalePostgresOutage: PostgreSQL restarts mid-stream, and later stops
// for 10 s, under two gateways. Nothing is lost, no replay gets through
// (copies of accepted messages are published during the outage), and
// /readyz is false, with the reason, while PostgreSQL is down.
func TestScalePostgresOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := pgtest.New(t)
	ids := []string{"pgo-1", "pgo-2", "pgo-3", "pgo-4"}
	f := newFixture(t, ids...)
	f.usePostgres(dsn)
	gws := startShared(f, dsn, 2)
	devs := devicesOf(f, ids)
	var mu sync.Mutex
	sent := map[string]bool{}
	var early [][]byte // accepted before the outage; replayed during it
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				raw, id := d.signed(fmt.Sprintf(`{"n":%d}`, i), time.Now().Unix())
				tok := d.c.Publish("device/"+d.id+"/data", 1, false, raw)
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					t.Errorf("publish: %v", tok.Error())
					return
				}
				mu.Lock()
				sent[id] = true
				if i < 3 {
					early = append(early, raw)
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(2 * time.Second)
	pgCluster(t, "restart")
	time.Sleep(3 * time.Second)
	pgCluster(t, "stop")
	downAt := time.Now()
	mu.Lock()
	replays := append([][]byte(nil), early...)
	mu.Unlock()
	for i, raw := range replays { // copies of accepted messages, while the database is down
		devs[i%len(devs)].c.Publish("device/"+devs[i%len(devs)].id+"/data", 1, false, raw)
	}
	notReady := make([]string, len(gws))
	for time.Since(downAt) < 10*time.Second {
		for i, g := range gws {
			if code, body := g.readyz(); code == 503 && notReady[i] == "" {
				notReady[i] = strings.TrimSpace(body)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	pgCluster(t, "start")
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	for i, why := range notReady {
		if !strings.Contains(why, "storage") && !strings.Contains(why, "outbox") {
			t.Errorf("gateway %d: /readyz not false with a storage reason during the outage (got %q)", i, why)
		}
		t.Logf("gateway %d /readyz during the outage: %q", i, why)
	}
	mu.Lock()
	want := len(sent)
	mu.Unlock()
	f.backend.waitCount(t, want, 60*time.Second)
	time.Sleep(2 * time.Second)
	got := map[string]int{}
	for _, r := range f.backend.requests() {
		got[r.Header.Get("X-Message-Id")]++
	}
	lost, dups := 0, 0
	for id := range sent {
		if got[id] == 0 {
			lost++
		}
	}
	for _, n := range got {
		dups += n - 1
	}
	for _, raw := range replays {
		var e struct {
			MessageID string `json:"message_id"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		if got[e.MessageID] != 1 {
			t.Errorf("replayed message %s reached the backend %d times", e.MessageID, got[e.MessageID])
		}
	}
	t.Logf("scenario postgres-outage: sent=%d forwarded=%d duplicate=%d lost=%d replays_sent=%d", want, len(got), dups, lost, len(replays))
	if lost != 0 || len(got) != want {
		t.Fatalf("lost %d of %d (backend has %d distinct)", lost, want, len(got))
	}
	if dups > len(ids)*len(gws) {
		for _, r := range f.backend.requests() {
			if got[r.Header.Get("X-Message-Id")] > 1 {
				t.Logf("dup %s seq %s at %s", r.Header.Get("X-Device-Id"), r.Header.Get("X-Iotgw-Seq"), r.At.Format("04:05.000"))
			}
		}
		t.Logf("PostgreSQL down %s to %s", downAt.Format("04:05.000"), downAt.Add(10*time.Second).Format("04:05.000"))
		t.Fatalf("%d duplicates: more than one in-flight POST per device and gateway", dups)
	}
}

// pgCount runs a COUNT query on dsn.
func pgCount(t *testing.T, dsn, q string) int {
	t.Helper()
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// distinct counts the distinct message ids in reqs.
func distinct(reqs []recorded) int {
	ids := map[string]bool{}
	for _, r := range reqs {
		ids[r.Header.Get("X-Message-Id")] = true
	}
	return len(ids)
}

// TestScaleRegistryChange: a device disabled through the CLI against
// PostgreSQL is rejected by all three gateways within 2 s (LISTEN
// iotgw_registry reloads each gateway's cache; registry.refresh is the
// fallback).
func TestScaleRegistryChange(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := pgtest.New(t)
	f := newFixture(t, "rc-1")
	f.usePostgres(dsn)
	var gws []*gatewayProc
	for n := range 3 {
		o := sharedOpts(dsn, n)
		edit := o.edit
		o.edit = func(cfg string) string { // polling alone would be too slow to pass
			return strings.Replace(edit(cfg), "refresh: 200ms", "refresh: 1m", 1)
		}
		gws = append(gws, f.startGateway(o))
	}
	d := f.device("rc-1")
	for i := range 3 { // every gateway serves the device first
		raw, _ := d.signed(fmt.Sprintf(`{"before":%d}`, i), time.Now().Unix())
		d.publish("", raw)
	}
	f.backend.waitCount(t, 3, 10*time.Second)
	f.pgCLI("", "device", "disable", "rc-1")
	disabledAt := time.Now()
	time.Sleep(time.Until(disabledAt.Add(2 * time.Second)))
	for i := range 9 { // round robin: three to each gateway
		raw, _ := d.signed(fmt.Sprintf(`{"after":%d}`, i), time.Now().Unix())
		d.publish("", raw)
	}
	for i, g := range gws {
		g.waitMetric(`iotgw_messages_rejected_total{reason="disabled"}`, 1, 10*time.Second)
		t.Logf("gateway %d rejected %.0f as disabled", i, g.metric(`iotgw_messages_rejected_total{reason="disabled"}`))
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(f.backend.requests()); n != 3 {
		t.Fatalf("backend got %d requests, want only the 3 sent before the disable", n)
	}
}

// TestScaleMigrate: a SQLite gateway with pending rows (backend down) is
// stopped and migrated with iotgw migrate --from sqlite --to postgres; a
// gateway on PostgreSQL then delivers every pending row, and copies of the
// already accepted messages are rejected as replays.
func TestScaleMigrate(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := pgtest.New(t)
	f := newFixture(t, "mg-1", "mg-2")
	f.backend.setBehave(func(recorded) (int, string, time.Duration) { return 503, `{}`, 0 })
	old := f.startGateway(gatewayOpts{})
	var sent [][]byte
	for _, id := range []string{"mg-1", "mg-2"} {
		d := f.device(id)
		for i := range 10 {
			raw, _ := d.signed(fmt.Sprintf(`{"n":%d}`, i), time.Now().Unix())
			d.publish("", raw)
			sent = append(sent, raw)
		}
	}
	old.waitMetric("iotgw_messages_accepted_total", 20, 10*time.Second)
	if code := old.signal(syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("gateway exit %d", code)
	}
	cfgPath := filepath.Join(f.dir, "migrate.yaml")
	cfg := fmt.Sprintf("storage:\n  engine: postgres\n  dsn: %q\nregistry:\n  path: %s\noutbox:\n  path: %s\n", dsn, f.db, f.outbox())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(f.bin, "", "migrate", "--from", "sqlite", "--to", "postgres", "--config", cfgPath)
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	t.Logf("iotgw migrate:\n%s", out)
	f.backend.setBehave(nil)
	f.pgDSN = dsn
	g := f.startGateway(sharedOpts(dsn, 0))
	reqs := f.backend.waitCount(t, 20, 30*time.Second)
	checkOnceInOrder(t, reqs, 20)
	for i, raw := range sent { // every stored id is still refused
		d := f.device([]string{"mg-1", "mg-2"}[i/10])
		d.publish("", raw)
	}
	g.waitMetric(`iotgw_messages_rejected_total{reason="replay"}`, 20, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	if n := len(f.backend.requests()); n != 20 {
		t.Fatalf("backend got %d requests after the replays, want 20", n)
	}
}

// TestScalePostgresReadOnly: with the database read-only (a replica
// promoted wrongly, a full disk's emergency mode), nothing is acked or
// forwarded, /readyz says why, and everything goes through once it is
// writable again.
func TestScalePostgresReadOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dsn := pgtest.New(t)
	f := newFixture(t, "ro-1")
	f.usePostgres(dsn)
	g := f.startGateway(sharedOpts(dsn, 0))
	u, _ := url.Parse(dsn)
	db := strings.TrimPrefix(u.Path, "/")
	admin := func(q string) {
		c, err := pgx.Connect(context.Background(), pgAdmin)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// New sessions are read-only; end the gateway's current ones.
	admin("ALTER DATABASE " + db + " SET default_transaction_read_only = on")
	admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + db + "'")
	d := f.device("ro-1")
	for i := range 20 {
		raw, _ := d.signed(fmt.Sprintf(`{"n":%d}`, i), time.Now().Unix())
		d.publish("", raw)
	}
	var why string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if code, body := g.readyz(); code == 503 && strings.Contains(body, "read-only") {
			why = strings.TrimSpace(body)
			break
		}
	}
	if why == "" {
		t.Fatal("/readyz did not report the read-only database within 10 s")
	}
	t.Logf("/readyz while read-only: %q", why)
	if n := g.metric("iotgw_messages_accepted_total"); n != 0 || len(f.backend.requests()) != 0 {
		t.Fatalf("accepted %v and forwarded %d while the database was read-only", n, len(f.backend.requests()))
	}
	admin("ALTER DATABASE " + db + " RESET default_transaction_read_only")
	admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + db + "'")
	checkOnceInOrder(t, f.backend.waitCount(t, 20, 30*time.Second), 20)
}
