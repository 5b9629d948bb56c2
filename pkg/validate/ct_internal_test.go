package validate

import (
	"hash"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// countingHash counts the MACs computed (one Sum per HMAC).
type countingHash struct {
	hash.Hash
	n *int
}

func (c countingHash) Sum(b []byte) []byte { *c.n++; return c.Hash.Sum(b) }

func countingPool(secret []byte, n *int) *macPool {
	p := &macPool{secret: secret}
	p.pool.New = func() any { return countingHash{envelope.NewMAC(secret), n} }
	return p
}

// TestVerifyCostIndependentOfMatch: for a device with k keys, verify
// computes exactly k HMACs whichever key matches (first, last, an expired
// one, none); a device with no keys pays one dummy HMAC, like an unknown
// device.
func TestVerifyCostIndependentOfMatch(t *testing.T) {
	t0 := time.Unix(1727712000, 0)
	secrets := [][]byte{[]byte("key-one-0123456789"), []byte("key-two-0123456789"), []byte("key-three-0123456789")}
	for _, tc := range []struct {
		name   string
		signer []byte
	}{
		{"first key (expired)", secrets[0]},
		{"second key", secrets[1]},
		{"last key", secrets[2]},
		{"no key", []byte("nobody-0123456789")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 0
			d := &deviceMACs{dummy: countingPool([]byte("dummy"), &n)}
			for i, s := range secrets {
				k := keyMAC{id: int64(i + 1), pool: countingPool(s, &n)}
				if i == 0 {
					k.expires = t0 // expired at t0
				}
				d.keys = append(d.keys, k)
			}
			e := envelope.New(tc.signer, "d", t0.Unix(), "00000000-0000-4000-8000-000000000000", []byte(`{}`))
			id, ok := d.verify(&e, t0)
			if n != len(secrets) {
				t.Fatalf("%d HMACs for %d keys", n, len(secrets))
			}
			wantOK := tc.name == "second key" || tc.name == "last key"
			if ok != wantOK || (ok && string(secrets[id-1]) != string(tc.signer)) {
				t.Fatalf("verify = %d, %v", id, ok)
			}
		})
	}
	n := 0
	d := &deviceMACs{dummy: countingPool([]byte("dummy"), &n)}
	e := envelope.New([]byte("x"), "d", t0.Unix(), "00000000-0000-4000-8000-000000000000", []byte(`{}`))
	if _, ok := d.verify(&e, t0); ok || n != 1 {
		t.Fatalf("no keys: ok=%v after %d HMACs, want false after 1", ok, n)
	}
}
