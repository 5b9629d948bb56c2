package test

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestKEKRotationWithGatewaysRunning follows docs/SECURITY.md "Rotating
// the KEK" on PostgreSQL with two gateways sharing the fleet: each is
// restarted in turn with the new KEK and the old one as
// security.previous_kek_file, the registry is re-sealed while both
// devices stream messages, and then each is restarted with the new KEK
// alone. Not one message is rejected on the way, every one is accepted
// exactly once, /readyz stays ready, and a disable made after the
// rotation still takes effect on both gateways.
func TestKEKRotationWithGatewaysRunning(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	e, kek1 := newRig(t, "postgres", "kr_d1", "kr_d2")
	kek2 := e.f.newKEKFile("kek2")
	start := func(i int, sec string) *gatewayProc {
		o := sharedOpts(e.dsn, i)
		o.extra += "security:\n  require_kek: true\n" + sec
		return e.f.startGateway(o)
	}
	only := func(k string) string { return "  kek_file: " + k + "\n" }
	both := only(kek2) + "  previous_kek_file: " + kek1 + "\n"
	gws := []*gatewayProc{start(0, only(kek1)), start(1, only(kek1))}
	devs := devicesOf(e.f, []string{"kr_d1", "kr_d2"})

	// 1. Each gateway in turn: the new KEK, the old one as previous.
	for i := range gws {
		if code := gws[i].signal(syscall.SIGTERM, 20*time.Second); code != 0 {
			t.Fatalf("gateway %d exit code %d", i, code)
		}
		gws[i] = start(i, both)
	}
	// 2. Re-seal while the devices send.
	const per = 40
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range per {
				raw, _ := d.signed(fmt.Sprintf(`{"n":%d}`, n), time.Now().Unix())
				tok := d.c.Publish("device/"+d.id+"/data", 1, false, raw)
				if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Errorf("publish %s: %v", d.id, tok.Error())
					return
				}
				time.Sleep(25 * time.Millisecond)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	e.cli(kek1, "", "kek", "rotate", "--new", kek2)
	wg.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for sum(gws, "iotgw_messages_accepted_total") < 2*per && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, series := range []string{"iotgw_messages_accepted_total", `iotgw_messages_rejected_total{reason="key_unavailable"}`,
		`iotgw_messages_rejected_total{reason="bad_signature"}`, "iotgw_registry_stale"} {
		t.Logf("%s: %v + %v", series, gws[0].metric(series), gws[1].metric(series))
	}
	if got := sum(gws, "iotgw_messages_accepted_total"); got != 2*per {
		t.Fatalf("accepted %v of %d messages sent across the rotation", got, 2*per)
	}
	for _, reason := range []string{"key_unavailable", "bad_signature", "unknown_device", "disabled"} {
		if n := sum(gws, fmt.Sprintf(`iotgw_messages_rejected_total{reason=%q}`, reason)); n != 0 {
			t.Fatalf("%v messages rejected as %s during the rotation", n, reason)
		}
	}
	for i, g := range gws {
		if code, body := readyz(t, g); code != http.StatusOK || g.metric("iotgw_registry_stale") != 0 {
			t.Fatalf("gateway %d after the rotation: /readyz %d %q", i, code, body)
		}
	}
	// 3. Each gateway in turn: the new KEK alone.
	for i := range gws {
		if code := gws[i].signal(syscall.SIGTERM, 20*time.Second); code != 0 {
			t.Fatalf("gateway %d exit code %d", i, code)
		}
		gws[i] = start(i, only(kek2))
	}
	// Nothing accepted wrongly: a disable after the rotation holds on
	// both gateways (each message goes to one of them).
	e.cli(kek2, "", "device", "disable", "kr_d2")
	time.Sleep(effectWithin)
	for range 6 {
		if v := verdictAny(t, gws, devs[1]); v != "disabled" {
			t.Fatalf("disabled kr_d2 after the rotation: %s", v)
		}
	}
	if v := verdictAny(t, gws, devs[0]); v != "accepted" {
		t.Fatalf("kr_d1 after the rotation: %s", v)
	}
}

// TestKEKReloadOnSIGHUP: one gateway on SQLite; the registry is re-sealed
// under a new KEK, so the device is rejected as key_unavailable (fail
// closed). The operator puts the new KEK in security.kek_file and sends
// SIGHUP: the gateway reloads it, the device is accepted again and /readyz
// is ready, without a restart. A KEK file that does not load (mode 0644)
// leaves the KEK in use, and the gateway running. Before, a SIGHUP ended
// the gateway.
func TestKEKReloadOnSIGHUP(t *testing.T) {
	e, kek1 := newRig(t, "sqlite", "hup_d1")
	g := e.start(kek1)
	d := e.f.device("hup_d1")
	if v := verdict(t, g, d); v != "accepted" {
		t.Fatalf("before: %s", v)
	}
	kek2 := e.f.newKEKFile("kek2")
	e.cli(kek1, "", "kek", "rotate", "--new", kek2)
	time.Sleep(effectWithin)
	if v := verdict(t, g, d); v != "key_unavailable" {
		t.Fatalf("after the re-seal, before SIGHUP: %s, want key_unavailable", v)
	}
	// A bad KEK file: refused, the gateway keeps running.
	b, err := os.ReadFile(kek2)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kek1, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(kek1, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(effectWithin)
	if v := verdict(t, g, d); v != "key_unavailable" {
		t.Fatalf("after a SIGHUP with a KEK file of mode 0644: %s, want key_unavailable", v)
	}
	// The new KEK in place, mode 0600: SIGHUP, and the device is back.
	if err := os.Chmod(kek1, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(effectWithin)
	if v := verdict(t, g, d); v != "accepted" {
		t.Fatalf("after SIGHUP with the new KEK: %s, want accepted", v)
	}
	if code, body := readyz(t, g); code != http.StatusOK {
		t.Fatalf("/readyz after the reload: %d %q", code, body)
	}
	log, _ := os.ReadFile(g.logPath)
	for _, want := range []string{"SIGHUP: KEK files not reloaded", "SIGHUP: KEK files reloaded"} {
		if !strings.Contains(string(log), want) {
			t.Fatalf("gateway log lacks %q", want)
		}
	}
}
