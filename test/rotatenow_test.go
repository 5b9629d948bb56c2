package test

import (
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/registry"
)

// TestNewKeyRightAfterRotate: the first message signed with a key that
// `iotgw device rotate` has just returned is accepted, not refused as
// bad_signature while the gateway's next registry refresh is pending (a
// refresh of one minute here, so only the re-read on a bad signature can
// find the key). Before the fix it was bad_signature on SQLite every time.
// A re-read shares the unknown-device miss's bound (one per
// registry.MissReloadEvery for the whole fleet), so the rotations here
// are that far apart.
func TestNewKeyRightAfterRotate(t *testing.T) {
	for _, engine := range []string{"sqlite", "postgres"} {
		t.Run(engine, func(t *testing.T) {
			e, kek := newRig(t, engine, "rn_d1")
			slow := func(cfg string) string { return strings.Replace(cfg, "refresh: 200ms", "refresh: 1m", 1) }
			sec := "security:\n  kek_file: " + kek + "\n"
			var g *gatewayProc
			if engine == "sqlite" {
				g = e.f.startGateway(gatewayOpts{extra: sec, edit: slow})
			} else {
				o := sharedOpts(e.dsn, 0)
				o.extra += sec
				edit := o.edit
				o.edit = func(cfg string) string { return slow(edit(cfg)) }
				g = e.f.startGateway(o)
			}
			d := e.f.device("rn_d1")
			if v := verdict(t, g, d); v != "accepted" {
				t.Fatalf("before the rotation: %s", v)
			}
			for i := range 3 {
				// Re-reads are bounded fleet-wide (registry.MissReloadEvery):
				// the previous one must be that long ago.
				time.Sleep(2 * registry.MissReloadEvery)
				secret := strings.TrimSpace(e.cli(kek, "", "device", "rotate", "rn_d1", "--overlap", "1h"))
				if !registry.ValidSecret(secret) {
					t.Fatal("device rotate printed no secret")
				}
				if v := verdictWith(t, []*gatewayProc{g}, d, secret); v != "accepted" {
					t.Fatalf("rotation %d: the new key's first message: %s, want accepted", i+1, v)
				}
			}
			if n := g.metric(`iotgw_messages_rejected_total{reason="bad_signature"}`); n != 0 {
				t.Fatalf("%v bad_signature rejections", n)
			}
		})
	}
}
