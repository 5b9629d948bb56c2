package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/registry"
)

// TestKeyRotationEndToEnd: `iotgw device rotate` while a real gateway runs.
// During the overlap, messages signed with the old and the new key are both
// accepted; replies are signed with the newest key the device has used;
// after a second rotation's overlap has passed the older keys are
// bad_signature and the gateway's refresh has deleted them from the registry.
func TestKeyRotationEndToEnd(t *testing.T) {
	f := newFixture(t)
	kek := f.newKEKFile("kek")
	oldSecret := f.addSealedDevice("rot_001", kek)
	g := f.startGateway(gatewayOpts{extra: "security:\n  kek_file: " + kek + "\n"})
	d := f.device("rot_001")
	n := 0
	send := func(secret string) reply {
		t.Helper()
		n++
		raw, _ := signAs("rot_001", secret, fmt.Sprintf(`{"n":%d}`, n), time.Now().Unix())
		d.publish("", raw)
		r, ok := d.nextReply(10 * time.Second)
		if !ok {
			t.Fatalf("message %d: no reply", n)
		}
		return r
	}
	accepted := func(r reply) bool { return !strings.Contains(string(r.env.Payload), `"error":`) }

	if r := send(oldSecret); !accepted(r) || !verifiesWith(r, oldSecret) {
		t.Fatalf("before rotation: reply %s, verifies with the old key %v", r.env.Payload, verifiesWith(r, oldSecret))
	}

	rotate := func(overlap string) string {
		t.Helper()
		cmd := exec.Command(f.bin, "device", "rotate", "rot_001", "--overlap", overlap, "--db", f.db)
		cmd.Env = append(os.Environ(), "IOTGW_SECURITY_KEK_FILE="+kek)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("device rotate: %v", err)
		}
		s := strings.TrimSpace(string(out))
		if !registry.ValidSecret(s) || s == oldSecret {
			t.Fatal("device rotate printed no new secret")
		}
		return s
	}
	// waitAccepted sends messages signed with secret until one is accepted:
	// a new key reaches the gateway within registry.refresh (200ms).
	waitAccepted := func(secret string) reply {
		t.Helper()
		var r reply
		for i := 0; i < 50; i++ {
			if r = send(secret); accepted(r) {
				return r
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("key never accepted: %s", r.env.Payload)
		return r
	}

	newSecret := rotate("1h")
	// Until the device uses its new key, replies stay on the old one (the
	// newest it has used): the device may not have the new secret yet.
	time.Sleep(5 * 200 * time.Millisecond) // five registry refreshes
	if r := send(oldSecret); !accepted(r) || !verifiesWith(r, oldSecret) {
		t.Fatalf("old-key message before the device used the new key: %s, reply on the old key %v", r.env.Payload, verifiesWith(r, oldSecret))
	}
	if r := waitAccepted(newSecret); !verifiesWith(r, newSecret) {
		t.Fatal("reply to a new-key message is not signed with the new key")
	}
	// Old key still valid in the overlap; the reply stays on the newest
	// key the device has used.
	r := send(oldSecret)
	if !accepted(r) {
		t.Fatalf("old key rejected during the overlap: %s", r.env.Payload)
	}
	if !verifiesWith(r, newSecret) || verifiesWith(r, oldSecret) {
		t.Fatal("reply to an old-key message after a new-key one is not signed with the newest key used")
	}

	// A second rotation with a short overlap: once it has passed, keys 1
	// and 2 are bad_signature and only key 3 verifies.
	const overlap = 2 * time.Second
	thirdSecret := rotate(overlap.String())
	rotatedAt := time.Now()
	if r := waitAccepted(thirdSecret); !verifiesWith(r, thirdSecret) {
		t.Fatal("reply to a key-3 message is not signed with key 3")
	}
	time.Sleep(time.Until(rotatedAt.Add(overlap + time.Second)))
	before := g.metric(`iotgw_messages_rejected_total{reason="bad_signature"}`)
	for _, s := range []string{oldSecret, newSecret} {
		if r := send(s); accepted(r) || !strings.Contains(string(r.env.Payload), "bad_signature") {
			t.Fatalf("expired key after the overlap: %s", r.env.Payload)
		}
	}
	g.waitMetric(`iotgw_messages_rejected_total{reason="bad_signature"}`, before+2, 5*time.Second)
	if r := send(thirdSecret); !accepted(r) || !verifiesWith(r, thirdSecret) {
		t.Fatalf("key 3 after the overlap: %s", r.env.Payload)
	}
	// The gateway's refresh deleted the expired key.
	reg, err := registry.Open(context.Background(), f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	var keys []registry.KeyInfo
	for i := 0; i < 50; i++ {
		if keys, err = reg.Keys(context.Background(), "rot_001"); err != nil || len(keys) == 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || len(keys) != 1 || keys[0].ID != 3 {
		t.Fatalf("keys after expiry: %+v, %v", keys, err)
	}
}
