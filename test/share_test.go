package test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/test/harness"
)

// Shared subscriptions (mqtt.share_group, issue 11): several gateways
// subscribe to $share/<group>/device/+/data and Mosquitto gives each
// message to one member of the group, round robin. These tests run the
// project's mosquitto.conf and acl in a real Mosquitto (2.0.11 here) and
// record what a device that knows the group name can do, and how the
// load is split and recovered between real `iotgw serve` processes.

// shareGroup is the group name of these tests.
const shareGroup = "iotgw-test-group-5e1d"

// shareFilter is the gateways' shared subscription.
const shareFilter = "$share/" + shareGroup + "/device/+/data"

// sessionClient connects to addr with cfg as clientID, clean session
// clean, without reconnecting. Every message it is delivered, including
// those of an inherited session that match no Subscribe of this
// connection, goes to msgs.
func sessionClient(t *testing.T, addr string, cfg *tls.Config, clientID string, clean bool, msgs chan<- mqtt.Message) mqtt.Client {
	t.Helper()
	opts := mqtt.NewClientOptions().AddBroker(addr).SetClientID(clientID).SetTLSConfig(cfg).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(harness.ConnectTimeout).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { msgs <- m })
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", clientID, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// drain waits until want messages arrived on observer (proof that the
// broker has routed them all), then quiet more, and returns how many
// arrived on each of counted meanwhile.
func drain(t *testing.T, observer <-chan mqtt.Message, want int, counted ...<-chan mqtt.Message) []int {
	t.Helper()
	for i := range want {
		select {
		case <-observer:
		case <-time.After(wait):
			t.Fatalf("observer got %d of %d messages", i, want)
		}
	}
	time.Sleep(quiet)
	n := make([]int, len(counted))
	for i, ch := range counted {
		for len(ch) > 0 {
			<-ch
			n[i]++
		}
	}
	return n
}

// publishN publishes n messages from c on device/<id>/data.
func publishN(t *testing.T, c mqtt.Client, id string, n int, tag string) {
	t.Helper()
	for i := range n {
		publish(t, c, "device/"+id+"/data", fmt.Sprintf("%s %d", tag, i))
	}
}

// TestShareGroupDeviceJoins: a device with a valid certificate that knows
// (or guessed) the group name subscribes to the gateways' shared
// subscription, on the device listener and on the gateway listener.
// Mosquitto 2.0.11 grants the subscription (SUBACK 0x01): the acl_file
// is not checked on subscribe, with or without $share. The device then
// takes its round-robin turn of the group's messages; delivery checks
// "read" on the message's topic (device/d2/data), which its ACL
// (read device/d1/response only) denies, so the device receives nothing
// and the message is DROPPED: the gateway silently gets 1 message in 2.
// $share/<group>/# is a different shared subscription (group and filter
// make a share): it receives nothing and costs the gateway nothing. The
// loss stops when a clean-session attacker disconnects; with clean
// session off, its share outlives the connection and the loss goes on.
func TestShareGroupDeviceJoins(t *testing.T) {
	const n = 20
	listeners := []struct {
		name     string
		addr     func(*harness.Broker) string
		clientID string // asked for; the device listener forces "d1"
	}{
		{"device listener", func(b *harness.Broker) string { return b.Addr }, "d1"},
		{"gateway listener", func(b *harness.Broker) string { return b.GatewayAddr }, "d1-share"},
	}
	for _, l := range listeners {
		t.Run(l.name, func(t *testing.T) {
			certs, b := brokerSetup(t)
			gw := gatewayOn(t, b, certs, fixtureClientID)
			gwData := mustSubscribe(t, gw, shareFilter)
			// The observer is not in the group: it sees every message, and
			// once it has, the broker has routed each to the group.
			observer := mustSubscribe(t, gatewayOn(t, b, certs, "iotgw:observer"), "device/+/data")
			d2 := harness.NewDeviceClient(t, b, certs, "d2")

			d1, err := harness.Connect(t, l.addr(b), harness.TLSConfig(t, certs, "d1"), l.clientID)
			if err != nil {
				t.Fatalf("d1 connect: %v", err)
			}
			shareCode, shareMsgs := subscribe(t, d1, shareFilter)
			allCode, allMsgs := subscribe(t, d1, "$share/"+shareGroup+"/#")
			t.Logf("SUBACK %s: %#x; SUBACK $share/%s/#: %#x", shareFilter, shareCode, shareGroup, allCode)
			if shareCode != subGranted || allCode != subGranted {
				t.Errorf("SUBACK %#x and %#x, want %#x (Mosquitto 2.0 grants every subscription; if this changed, update docs/SECURITY.md)", shareCode, allCode, subGranted)
			}

			publishN(t, d2, "d2", n, "while d1 is in the group")
			got := drain(t, observer, n, gwData, shareMsgs, allMsgs)
			t.Logf("%d messages published: the gateway got %d, d1 got %d on the shared data filter and %d on $share/%s/#", n, got[0], got[1], got[2], shareGroup)
			if got[1] != 0 || got[2] != 0 {
				t.Fatalf("d1 read %d and %d of d2's messages", got[1], got[2])
			}
			if got[0] != n/2 {
				t.Errorf("the gateway got %d of %d, want %d (d1's round-robin turns dropped); if this changed, update docs/SECURITY.md", got[0], n, n/2)
			}

			d1.Disconnect(50)
			publishN(t, d2, "d2", n, "after d1 left")
			if got := drain(t, observer, n, gwData); got[0] != n {
				t.Errorf("after d1 disconnected (clean session) the gateway got %d of %d", got[0], n)
			}
		})
	}

	// A device with clean session off joins the group and goes away:
	// Mosquitto keeps its subscription in its offline session (no
	// persistent_client_expiration in mosquitto.conf), keeps giving it its
	// turn, and drops it, since the device may not read the topic.
	t.Run("persistent session", func(t *testing.T) {
		certs, b := brokerSetup(t)
		gw := gatewayOn(t, b, certs, fixtureClientID)
		gwData := mustSubscribe(t, gw, shareFilter)
		observer := mustSubscribe(t, gatewayOn(t, b, certs, "iotgw:observer"), "device/+/data")
		d2 := harness.NewDeviceClient(t, b, certs, "d2")

		session := make(chan mqtt.Message, 100)
		d1 := sessionClient(t, b.Addr, harness.TLSConfig(t, certs, "d1"), "d1", false, session)
		if tok := d1.Subscribe(shareFilter, 1, nil); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		d1.Disconnect(50)

		publishN(t, d2, "d2", n, "while d1 is offline")
		got := drain(t, observer, n, gwData)
		t.Logf("d1 offline with its share: the gateway got %d of %d", got[0], n)
		if got[0] != n/2 {
			t.Errorf("the gateway got %d of %d, want %d; if this changed, update docs/SECURITY.md", got[0], n, n/2)
		}

		// Back with the same session: nothing was queued for it.
		d1 = sessionClient(t, b.Addr, harness.TLSConfig(t, certs, "d1"), "d1", false, session)
		publish(t, d2, "device/d2/data", "marker")
		drain(t, observer, 1)
		if len(session) != 0 {
			m := <-session
			t.Fatalf("d1's session delivered %q on %s", m.Payload(), m.Topic())
		}
		d1.Disconnect(50)
		for len(gwData) > 0 {
			<-gwData
		}

		// The operator's remedy: the gateway's certificate, on the gateway
		// listener (which keeps client ids), connects as "d1" with a clean
		// session, which discards d1's session and its share.
		purge, err := harness.Connect(t, b.GatewayAddr, harness.TLSConfig(t, certs, "gateway"), "d1")
		if err != nil {
			t.Fatalf("connect as d1 on the gateway listener: %v", err)
		}
		purge.Disconnect(50)
		publishN(t, d2, "d2", n, "after the purge")
		if got := drain(t, observer, n, gwData); got[0] != n {
			t.Errorf("after d1's session was discarded the gateway got %d of %d", got[0], n)
		}
	})
}

// TestShareGroupGatewayListenerManyShares: on the gateway listener client
// ids are kept, so ONE device certificate that reaches it takes as many
// turns as it opens connections (on the device listener, one: its id is
// its CN). Three connections: the gateway gets 1 message in 4.
func TestShareGroupGatewayListenerManyShares(t *testing.T) {
	const n, conns = 20, 3
	certs, b := brokerSetup(t)
	gwData := mustSubscribe(t, gatewayOn(t, b, certs, fixtureClientID), shareFilter)
	observer := mustSubscribe(t, gatewayOn(t, b, certs, "iotgw:observer"), "device/+/data")
	d2 := harness.NewDeviceClient(t, b, certs, "d2")
	var stolen []<-chan mqtt.Message
	for i := range conns {
		c, err := harness.Connect(t, b.GatewayAddr, harness.TLSConfig(t, certs, "d1"), fmt.Sprintf("d1-%d", i))
		if err != nil {
			t.Fatalf("d1 connection %d: %v", i, err)
		}
		stolen = append(stolen, mustSubscribe(t, c, shareFilter))
	}
	publishN(t, d2, "d2", n, "three shares")
	got := drain(t, observer, n, append([]<-chan mqtt.Message{gwData}, stolen...)...)
	t.Logf("%d messages, d1 with %d connections in the group: the gateway got %d, d1 got %v", n, conns, got[0], got[1:])
	for i, k := range got[1:] {
		if k != 0 {
			t.Fatalf("d1 connection %d read %d messages", i, k)
		}
	}
	if got[0] != n/(conns+1) {
		t.Errorf("the gateway got %d of %d, want %d; if this changed, update docs/SECURITY.md", got[0], n, n/(conns+1))
	}
}

// shareMember returns the options of one `iotgw serve` in the share
// group, as mqtt.client_id clientID, with its own copy of the registry
// and its own outbox (SQLite, named after name), made now.
func (f *fixture) shareMember(name, clientID string) gatewayOpts {
	f.t.Helper()
	db := filepath.Join(f.dir, "registry-"+name+".db")
	if _, err := os.Stat(f.db + "-wal"); err == nil {
		f.t.Fatalf("registry %s has a WAL file: copy it with the database", f.db)
	}
	b, err := os.ReadFile(f.db)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(db, b, 0o600); err != nil {
		f.t.Fatal(err)
	}
	outbox := filepath.Join(f.dir, "outbox-"+name+".db")
	registryPath, outboxPath := f.db, f.outbox()
	return gatewayOpts{edit: func(cfg string) string {
		for _, r := range []struct{ old, new string }{
			{"  client_id: " + fixtureClientID + "\n", "  client_id: " + clientID + "\n  share_group: " + shareGroup + "\n"},
			{"  path: " + registryPath + "\n", "  path: " + db + "\n"},
			{"  path: " + outboxPath + "\n", "  path: " + outbox + "\n"},
		} {
			if strings.Count(cfg, r.old) != 1 {
				f.t.Fatalf("config: %q not found once; update shareMember", r.old)
			}
			cfg = strings.Replace(cfg, r.old, r.new, 1)
		}
		return cfg
	}}
}

// shareDevices publish the share group tests' traffic.
var shareDevices = []string{"share_a", "share_b", "share_c", "share_d"}

// sendSigned publishes n signed messages from each publisher, one
// publisher after the other, and returns the message ids.
func sendSigned(t *testing.T, pubs []*publisher, n int) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for i := range n {
		for _, p := range pubs {
			raw, id := signAs(p.id, p.secret, fmt.Sprintf(`{"seq":%d,"device":%q}`, i, p.id), time.Now().Unix())
			p.send(t, raw)
			ids[id] = true
		}
	}
	return ids
}

// exactlyOnce checks that the backend got each of ids exactly once and
// nothing else.
func exactlyOnce(t *testing.T, rec *recorder, ids map[string]bool) {
	t.Helper()
	seen := map[string]int{}
	for _, r := range rec.requests() {
		seen[r.Header.Get("X-Message-ID")]++
	}
	for id, k := range seen {
		switch {
		case !ids[id]:
			t.Errorf("backend got unknown message %q %d times", id, k)
		case k != 1:
			t.Errorf("message %s forwarded %d times", id, k)
		}
	}
	for id := range ids {
		if seen[id] == 0 {
			t.Errorf("message %s never reached the backend", id)
		}
	}
}

// TestShareGroupSplitsLoad: two `iotgw serve` processes (SQLite, each its
// own registry copy and outbox, client ids iotgw:share-1 and
// iotgw:share-2) in one share group on one broker split 200 messages
// from 4 devices; each reaches the backend exactly once.
func TestShareGroupSplitsLoad(t *testing.T) {
	const perDevice = 50
	f := newFixture(t, shareDevices...)
	g1 := f.startGateway(f.shareMember("1", "iotgw:share-1"))
	g2 := f.startGateway(f.shareMember("2", "iotgw:share-2"))
	var pubs []*publisher
	for _, id := range shareDevices {
		pubs = append(pubs, f.publisher(id))
	}
	ids := sendSigned(t, pubs, perDevice)
	total := perDevice * len(shareDevices)
	f.backend.waitCount(t, total, 30*time.Second)
	time.Sleep(quiet) // any duplicate lands
	exactlyOnce(t, f.backend, ids)
	r1, r2 := g1.metric("iotgw_messages_received_total"), g2.metric("iotgw_messages_received_total")
	t.Logf("%d messages: iotgw_messages_received_total %v on iotgw:share-1, %v on iotgw:share-2", total, r1, r2)
	if r1 == 0 || r2 == 0 || r1+r2 != float64(total) {
		t.Errorf("received %v and %v, want both > 0 summing to %d", r1, r2, total)
	}
}

// TestShareGroupReplayAcrossMembers: with the SQLite engine each member
// has its own replay window, and consecutive messages go to different
// members. A device's message published twice (a replay) is caught only
// when both copies reach the same member; otherwise both are forwarded,
// with the same Idempotency-Key, on which the backend must deduplicate.
func TestShareGroupReplayAcrossMembers(t *testing.T) {
	const pairs = 10
	f := newFixture(t, shareDevices[0])
	f.startGateway(f.shareMember("1", "iotgw:share-1"))
	f.startGateway(f.shareMember("2", "iotgw:share-2"))
	p := f.publisher(shareDevices[0])
	for i := range pairs {
		raw, _ := signAs(p.id, p.secret, fmt.Sprintf(`{"seq":%d}`, i), time.Now().Unix())
		p.send(t, raw)
		p.send(t, raw) // the replay
	}
	f.backend.waitCount(t, pairs, 30*time.Second)
	time.Sleep(2 * quiet)
	keys := map[string][]string{}
	for _, r := range f.backend.requests() {
		id := r.Header.Get("X-Message-ID")
		keys[id] = append(keys[id], r.Header.Get("Idempotency-Key"))
	}
	twice := 0
	for id, k := range keys {
		if len(k) > 1 {
			twice++
			if k[0] == "" || k[0] != k[1] {
				t.Errorf("message %s forwarded with Idempotency-Key %q", id, k)
			}
		}
	}
	t.Logf("%d messages each published twice: %d reached the backend twice (the replay went to the other member), %d once", pairs, twice, len(keys)-twice)
	if len(keys) != pairs {
		t.Errorf("backend got %d distinct messages, want %d", len(keys), pairs)
	}
}

// TestShareGroupRecoveryByClientID: the MQTT 3.1.1 recovery rule. Member A
// (iotgw:share-a) is stopped (SIGSTOP) and 200 messages are published: the
// broker keeps giving A its round-robin turn, writing them to A's
// connection, where nobody acks them. A is killed (SIGKILL): its
// unacked messages stay in its persistent session; member B does not get
// them, and of 20 more messages published while A is dead, A's offline
// session still gets its turn. A replacement with A's client id and fresh state (its own empty
// outbox, a registry copy) connects with clean session off and drains
// them. Every message reaches the backend exactly once.
func TestShareGroupRecoveryByClientID(t *testing.T) {
	const perDevice = 50
	f := newFixture(t, shareDevices...)
	a := f.startGateway(f.shareMember("a", "iotgw:share-a"))
	b := f.startGateway(f.shareMember("b", "iotgw:share-b"))
	var pubs []*publisher
	for _, id := range shareDevices {
		pubs = append(pubs, f.publisher(id))
	}
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitStopped(t, a.cmd.Process.Pid) // else A may take a share before it stops, and B's count never matches the backend's
	ids := sendSigned(t, pubs, perDevice)
	total := len(ids)
	// B forwards its share; A's stays with A.
	toB := int(b.waitMetric("iotgw_messages_received_total", 1, 10*time.Second))
	for {
		time.Sleep(time.Second)
		now := int(b.metric("iotgw_messages_received_total"))
		if now == toB && len(f.backend.requests()) == now {
			break
		}
		toB = now
	}
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.done
	time.Sleep(quiet)
	if got := int(b.metric("iotgw_messages_received_total")); got != toB {
		t.Errorf("B received %d after A died, had %d: the broker redistributed A's messages", got, toB)
	}
	toA := total - toB
	t.Logf("%d messages published while A was stopped: %d to B, %d left in A's session", total, toB, toA)
	if toA == 0 {
		t.Fatal("nothing was left in A's session: the test proves nothing")
	}

	// While A is dead, the broker keeps giving its offline session its turn.
	for id := range sendSigned(t, pubs, 5) {
		ids[id] = true
	}
	b.waitMetric("iotgw_messages_received_total", float64(toB+1), 10*time.Second)
	time.Sleep(time.Second) // B has its whole share of them
	afterB := int(b.metric("iotgw_messages_received_total")) - toB
	t.Logf("%d more published after A died: %d to B, %d queued in A's session", len(ids)-total, afterB, len(ids)-total-afterB)
	if afterB == len(ids)-total {
		t.Errorf("B got all %d messages published after A died", afterB)
	}
	toA += len(ids) - total - afterB
	total = len(ids)

	a2 := f.startGateway(f.shareMember("a2", "iotgw:share-a"))
	f.backend.waitCount(t, total, 30*time.Second)
	time.Sleep(quiet)
	exactlyOnce(t, f.backend, ids)
	t.Logf("A's replacement received %v", a2.metric("iotgw_messages_received_total"))
	if got := int(a2.metric("iotgw_messages_received_total")); got < toA {
		t.Errorf("A's replacement received %d, want at least %d", got, toA)
	}
}

// TestShareGroupStoppedMemberKeepsItsTurn: a member stopped cleanly
// (SIGTERM) does not unsubscribe; its session keeps its turn, and
// messages wait there until it (or a replacement with its client id)
// is back. To retire a member for good, its session must be discarded:
// a connection with its client id and a clean session, after which the
// remaining member gets everything.
func TestShareGroupStoppedMemberKeepsItsTurn(t *testing.T) {
	f := newFixture(t, shareDevices...)
	g1 := f.startGateway(f.shareMember("1", "iotgw:share-1"))
	g2 := f.startGateway(f.shareMember("2", "iotgw:share-2"))
	var pubs []*publisher
	for _, id := range shareDevices {
		pubs = append(pubs, f.publisher(id))
	}
	if code := g2.signal(syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("member 2 exited %d on SIGTERM", code)
	}
	ids := sendSigned(t, pubs, 5) // 20
	g1.waitMetric("iotgw_messages_received_total", 1, 10*time.Second)
	time.Sleep(time.Second)
	to1 := int(g1.metric("iotgw_messages_received_total"))
	t.Logf("member 2 stopped with SIGTERM, %d messages published: %d to member 1, %d wait in member 2's session", len(ids), to1, len(ids)-to1)
	if to1 == len(ids) {
		t.Fatalf("member 1 got all %d: the stopped member left the group", to1)
	}
	g2b := f.startGateway(f.shareMember("2b", "iotgw:share-2"))
	f.backend.waitCount(t, len(ids), 30*time.Second)
	time.Sleep(quiet)
	exactlyOnce(t, f.backend, ids)
	t.Logf("member 2 restarted: it received %v", g2b.metric("iotgw_messages_received_total"))

	// Retire member 2: stop it, then discard its session.
	if code := g2b.signal(syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("member 2 exited %d on SIGTERM", code)
	}
	// With the command docs/SCALING.md gives (clean session is
	// mosquitto_sub's default).
	purge := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", strconv.Itoa(f.broker.GatewayPort),
		"--cafile", filepath.Join(f.certs, "ca.crt"), "--cert", filepath.Join(f.certs, "gateway.crt"),
		"--key", filepath.Join(f.certs, "gateway.key"), "-i", "iotgw:share-2", "-t", "none", "-E")
	if out, err := purge.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_sub -i iotgw:share-2: %v\n%s", err, out)
	}
	before := int(g1.metric("iotgw_messages_received_total"))
	for id := range sendSigned(t, pubs, 5) {
		ids[id] = true
	}
	f.backend.waitCount(t, len(ids), 30*time.Second)
	time.Sleep(quiet)
	exactlyOnce(t, f.backend, ids)
	if got := int(g1.metric("iotgw_messages_received_total")) - before; got != 20 {
		t.Errorf("after member 2's session was discarded member 1 got %d of 20", got)
	}
}

// waitStopped waits until process pid is stopped (state T in
// /proc/<pid>/stat): a signal is delivered asynchronously, and on a busy
// machine a process may run on for a while after SIGSTOP was sent.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	for range 1000 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		// pid (comm) state ...: the state follows the last ')'.
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'T' {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d not stopped after SIGSTOP", pid)
}
