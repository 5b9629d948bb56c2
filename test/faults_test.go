package test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/test/harness"
)

// The fault-injection suite (issue: nothing lost, no replay let through).
// Each scenario streams at least 2,000 signed messages from several
// devices through real Mosquitto and a real `iotgw serve`, breaks something
// mid-stream, and then checks the backend's log by message_id: every valid
// message arrived, none twice, and no forged or replayed message arrived.
// Each prints one line: scenario, sent, forwarded, duplicate, lost.

const faultMessages = 2000

var faultDevices = []string{"fault_a", "fault_b", "fault_c", "fault_d", "fault_e"}

// publisher is a device client that reconnects by itself, so a stream
// survives a broker restart; send retries until the broker acks.
type publisher struct {
	id, secret string
	c          mqtt.Client
}

func (f *fixture) publisher(id string) *publisher {
	f.t.Helper()
	opts := mqtt.NewClientOptions().AddBroker(f.broker.Addr).SetClientID(id + "-pub").
		SetTLSConfig(harness.TLSConfig(f.t, f.certs, id)).SetCleanSession(true).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(200 * time.Millisecond).
		SetMaxReconnectInterval(500 * time.Millisecond).SetConnectTimeout(3 * time.Second).SetWriteTimeout(3 * time.Second)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		f.t.Fatalf("connect %s: %v", id, tok.Error())
	}
	f.t.Cleanup(func() { c.Disconnect(100) })
	return &publisher{id: id, secret: f.secrets[id], c: c}
}

// send publishes raw to the device's data topic until the broker acks it.
func (p *publisher) send(t *testing.T, raw []byte) {
	start := time.Now()
	for {
		tok := p.c.Publish("device/"+p.id+"/data", 1, false, raw)
		if tok.WaitTimeout(3*time.Second) && tok.Error() == nil {
			return
		}
		if time.Since(start) > 90*time.Second {
			t.Errorf("%s: broker did not ack a publish for 90 s: %v", p.id, tok.Error())
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stream is one scenario's traffic and its bookkeeping.
type stream struct {
	t      *testing.T
	f      *fixture
	pubs   []*publisher
	mu     sync.Mutex
	sent   map[string]sentMsg // valid messages the broker acked
	forged map[string]bool    // ids of forged messages (bad signature)
	nSent  int
}

type sentMsg struct {
	device string
	seq    int
	raw    []byte
}

func newStream(t *testing.T, f *fixture) *stream {
	s := &stream{t: t, f: f, sent: map[string]sentMsg{}, forged: map[string]bool{}}
	for _, id := range faultDevices {
		s.pubs = append(s.pubs, f.publisher(id))
	}
	return s
}

// run sends n valid messages round-robin from every device, each device
// sequentially with pace between its messages; every 50th message a forged
// one (tampered after signing) and a replay of an earlier valid one are sent
// too. at is called (in the stream's goroutine for device 0) once the given
// number of valid messages have been acked, to inject a fault.
func (s *stream) run(n int, pace time.Duration, at map[int]func()) {
	per := n / len(s.pubs)
	var wg sync.WaitGroup
	var atMu sync.Mutex
	fired := map[int]bool{}
	for di, p := range s.pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var earlier []byte
			for i := range per {
				raw, id := signAs(p.id, p.secret, fmt.Sprintf(`{"seq":%d,"device":%q}`, i, p.id), time.Now().Unix())
				p.send(s.t, raw)
				s.mu.Lock()
				s.sent[id] = sentMsg{device: p.id, seq: i, raw: raw}
				s.nSent++
				count := s.nSent
				s.mu.Unlock()
				if i%50 == 25 {
					forged, fid := signAs(p.id, p.secret, `{"seq":-1}`, time.Now().Unix())
					forged = []byte(strings.Replace(string(forged), `"seq":-1`, `"seq":-2`, 1))
					s.mu.Lock()
					s.forged[fid] = true
					s.mu.Unlock()
					p.send(s.t, forged)
					if earlier != nil {
						p.send(s.t, earlier) // a replay
					}
					earlier = raw
				}
				if di == 0 {
					atMu.Lock()
					for k, f := range at {
						if count >= k && !fired[k] {
							fired[k] = true
							f()
						}
					}
					atMu.Unlock()
				}
				if pace > 0 {
					time.Sleep(pace)
				}
			}
		}()
	}
	wg.Wait()
	for k, f := range at { // any hook not reached (cannot happen with k ≤ n)
		if !fired[k] {
			f()
		}
	}
}

// result is what the backend got, by message id.
type result struct {
	sent, forwarded, duplicate, lost, forged, unknown int
	arrivals                                          map[string][]time.Time
}

// settle waits until every sent message reached the backend (or timeout),
// then counts, prints the scenario line and returns the counts.
func (s *stream) settle(name string, timeout time.Duration) result {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var r result
	for {
		r = s.count()
		if r.lost == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let any stray duplicate land before the final count
	r = s.count()
	fmt.Printf("scenario %-28s sent=%d forwarded=%d duplicate=%d lost=%d forged_through=%d\n",
		name, r.sent, r.forwarded, r.duplicate, r.lost, r.forged+r.unknown)
	if r.lost > 0 {
		s.t.Errorf("%d of %d messages lost", r.lost, r.sent)
	}
	if r.forged > 0 || r.unknown > 0 {
		s.t.Errorf("%d forged and %d unknown messages reached the backend", r.forged, r.unknown)
	}
	return r
}

func (s *stream) count() result {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := result{sent: len(s.sent), arrivals: map[string][]time.Time{}}
	for _, req := range s.f.backend.requests() {
		id := req.Header.Get("X-Message-ID")
		r.arrivals[id] = append(r.arrivals[id], req.At)
	}
	for id, at := range r.arrivals {
		switch {
		case s.forged[id]:
			r.forged++
		case s.sent[id].raw == nil:
			r.unknown++
		default:
			r.forwarded++
			r.duplicate += len(at) - 1
		}
	}
	r.lost = r.sent - r.forwarded
	return r
}

// noDuplicates fails on any message forwarded twice.
func (s *stream) noDuplicates(r result) {
	s.t.Helper()
	for id, at := range r.arrivals {
		if len(at) > 1 {
			s.t.Errorf("message %s forwarded %d times", id, len(at))
		}
	}
}

// inOrder fails unless each device's messages reached the backend in the
// order it sent them.
func (s *stream) inOrder() {
	s.t.Helper()
	last := map[string]int{}
	for _, req := range s.f.backend.requests() {
		var p struct {
			Seq    int    `json:"seq"`
			Device string `json:"device"`
		}
		if json.Unmarshal(req.Body, &p) != nil || p.Device == "" {
			continue
		}
		if prev, ok := last[p.Device]; ok && p.Seq <= prev {
			s.t.Errorf("%s: message %d forwarded after %d", p.Device, p.Seq, prev)
			return
		}
		last[p.Device] = p.Seq
	}
}

func newFaultFixture(t *testing.T) *fixture {
	return newFixture(t, faultDevices...)
}

// Scenario 1: kill -9 the gateway three times mid-stream, restarting it
// each time. The only duplicates allowed are the documented at-least-once
// window: a POST the backend answered just before the kill, whose row was
// not yet deleted, sent again after the restart.
func TestFaultKill9(t *testing.T) {
	f := newFaultFixture(t)
	g := f.startGateway(gatewayOpts{})
	s := newStream(t, f)
	type crash struct{ killed, restarted time.Time }
	var crashes []crash
	at := map[int]func(){}
	for k := range 3 {
		point := (k+1)*faultMessages/4 + rand.IntN(faultMessages/8) - faultMessages/16
		at[point] = func() {
			c := crash{killed: time.Now()}
			g.kill()
			time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
			c.restarted = time.Now()
			g = f.startGateway(gatewayOpts{})
			crashes = append(crashes, c)
		}
	}
	s.run(faultMessages, 10*time.Millisecond, at)
	r := s.settle("1 kill -9 x3", 60*time.Second)
	if len(crashes) != 3 {
		t.Fatalf("%d crashes injected, want 3", len(crashes))
	}
	for id, arr := range r.arrivals {
		if len(arr) < 2 {
			continue
		}
		ok := false
		for _, c := range crashes {
			// The first POST came from the killed process: its bytes may
			// still be read by the backend a moment after SIGKILL, so
			// the bound is the restart, not the kill. The second came
			// from the new process.
			if len(arr) == 2 && arr[0].Before(c.restarted) && arr[1].After(c.restarted) &&
				c.killed.Sub(arr[0]) < 5*time.Second {
				ok = true
			}
		}
		if !ok {
			t.Errorf("message %s forwarded %d times, outside the crash window (%v)", id, len(arr), arr)
		}
	}
}

// Scenario 2: the backend answers 503 for 20 s, then recovers.
func TestFaultBackend503(t *testing.T) {
	f := newFaultFixture(t)
	f.startGateway(gatewayOpts{})
	s := newStream(t, f)
	var until time.Time
	var mu sync.Mutex
	f.backend.setBehave(func(recorded) (int, string, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if time.Now().Before(until) {
			return 503, `{"error":"maintenance"}`, 0
		}
		return 200, `{"ok":true}`, 0
	})
	s.run(faultMessages, 2*time.Millisecond, map[int]func(){faultMessages / 4: func() {
		mu.Lock()
		until = time.Now().Add(20 * time.Second)
		mu.Unlock()
	}})
	r := s.settle("2 backend 503 for 20s", 60*time.Second)
	s.noDuplicates(r)
	s.inOrder()
}

// Scenario 3: the backend refuses connections for 30 s.
func TestFaultBackendDown(t *testing.T) {
	f := newFaultFixture(t)
	g := f.startGateway(gatewayOpts{})
	s := newStream(t, f)
	back := make(chan struct{})
	s.run(faultMessages, 2*time.Millisecond, map[int]func(){faultMessages / 4: func() {
		f.backend.down()
		time.AfterFunc(30*time.Second, func() { close(back) })
	}})
	// While it is down, readiness says why.
	if resp := httpGet(t, "http://"+g.http+"/readyz"); !strings.Contains(resp, "breaker") {
		t.Errorf("/readyz during the outage = %q, want the circuit breaker named", resp)
	}
	<-back
	f.backend.up(t)
	r := s.settle("3 backend refused for 30s", 60*time.Second)
	s.noDuplicates(r)
	s.inOrder()
}

// Scenario 4: the backend takes 2 s per request for 10 s.
func TestFaultBackendSlow(t *testing.T) {
	f := newFaultFixture(t)
	f.startGateway(gatewayOpts{})
	s := newStream(t, f)
	var until time.Time
	var mu sync.Mutex
	f.backend.setBehave(func(recorded) (int, string, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if time.Now().Before(until) {
			return 200, `{"ok":true}`, 2 * time.Second
		}
		return 200, `{"ok":true}`, 0
	})
	s.run(faultMessages, 2*time.Millisecond, map[int]func(){faultMessages / 4: func() {
		mu.Lock()
		until = time.Now().Add(10 * time.Second)
		mu.Unlock()
	}})
	r := s.settle("4 backend 2s/request for 10s", 90*time.Second)
	s.noDuplicates(r)
	s.inOrder()
}

// Scenario 5: Mosquitto is restarted mid-stream, twice. The first time
// the gateway is connected and must reconnect and resubscribe. The second
// time the gateway is stopped, so the broker is holding messages queued on
// the gateway's persistent session; they must survive the restart (the
// project's config has persistence on) and reach the backend once the
// gateway is back.
func TestFaultBrokerRestart(t *testing.T) {
	f := newFaultFixture(t)
	g := f.startGateway(gatewayOpts{})
	s := newStream(t, f)
	var queuedFrom int
	s.run(faultMessages, 5*time.Millisecond, map[int]func(){
		faultMessages / 4: func() { f.broker.Restart() },
		faultMessages / 2: func() {
			if code := g.signal(syscall.SIGTERM, 20*time.Second); code != 0 {
				t.Errorf("gateway exit code %d after SIGTERM", code)
			}
			queuedFrom = len(f.backend.requests())
		},
		faultMessages * 5 / 8: func() { f.broker.Restart() },
		faultMessages * 3 / 4: func() {
			if n := len(f.backend.requests()); n != queuedFrom {
				t.Errorf("backend got %d requests while the gateway was stopped", n-queuedFrom)
			}
			g = f.startGateway(gatewayOpts{})
		},
	})
	r := s.settle("5 broker restart x2", 60*time.Second)
	s.noDuplicates(r)
	g.waitReady(10 * time.Second)
}

// Scenario 6: right after a gateway restart, every message sent before it
// is replayed; every one is rejected as a replay.
func TestFaultReplayAfterRestart(t *testing.T) {
	f := newFaultFixture(t)
	g := f.startGateway(gatewayOpts{})
	s := newStream(t, f)
	s.run(faultMessages, 0, nil)
	r := s.settle("6 replay after restart", 60*time.Second)
	s.noDuplicates(r)
	if code := g.signal(syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("gateway exit code %d after SIGTERM", code)
	}
	g = f.startGateway(gatewayOpts{})
	before := len(f.backend.requests())
	var raws [][]byte
	s.mu.Lock()
	for _, m := range s.sent {
		raws = append(raws, m.raw)
	}
	s.mu.Unlock()
	byDev := map[string]*publisher{}
	for _, p := range s.pubs {
		byDev[p.id] = p
	}
	for _, raw := range raws {
		var e struct {
			DeviceID string `json:"device_id"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("own message %q: %v", raw, err)
		}
		byDev[e.DeviceID].send(t, raw)
	}
	g.waitMetric(`iotgw_messages_rejected_total{reason="replay"}`, float64(len(raws)), 30*time.Second)
	time.Sleep(300 * time.Millisecond)
	if n := len(f.backend.requests()) - before; n != 0 {
		t.Errorf("%d replayed messages reached the backend", n)
	}
	if v := g.metric("iotgw_messages_accepted_total"); v != 0 {
		t.Errorf("accepted after restart = %v, want 0", v)
	}
	fmt.Printf("scenario %-28s replayed=%d rejected_as_replay=%v forwarded=%d\n", "6 replays rejected", len(raws),
		g.metric(`iotgw_messages_rejected_total{reason="replay"}`), len(f.backend.requests())-before)
}

// Scenario 7: the outbox's disk fills up. The gateway stops acking, says
// why loudly (log line, /readyz), and loses nothing once space returns.
// It needs root to mount a small tmpfs; CI runs as root.
func TestFaultDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: the disk-full scenario mounts a tmpfs and needs root (CI runs as root)")
	}
	f := newFaultFixture(t)
	mnt := filepath.Join(f.dir, "small")
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s", mnt, err, out)
		}
	})
	f.outboxPath = filepath.Join(mnt, "outbox.db")
	g := f.startGateway(gatewayOpts{})
	s := newStream(t, f)
	var sawFull bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.run(faultMessages, time.Millisecond, nil)
	}()
	// Wait for the disk to fill and the gateway to say so.
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && !sawFull {
		if strings.Contains(httpGet(t, "http://"+g.http+"/readyz"), "outbox: commit failing") {
			sawFull = true
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !sawFull {
		t.Fatal("the outbox never reported a failing commit on a full disk")
	}
	time.Sleep(2 * time.Second) // stays full for a while: nothing must be acked meanwhile
	log, _ := os.ReadFile(g.logPath)
	if !strings.Contains(string(log), "OUTBOX COMMIT FAILED") {
		t.Error("no loud log line about the failing outbox commit")
	}
	if out, err := exec.Command("mount", "-o", "remount,size=64m", mnt).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v: %s", err, out)
	}
	<-done
	r := s.settle("7 disk full, then space", 90*time.Second)
	s.noDuplicates(r)
}

func httpGet(t *testing.T, url string) string {
	resp, err := httpClient.Get(url)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	return b.String()
}
