package device

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// memStore is a CounterStore in memory that can fail its saves.
type memStore struct {
	start  int64
	ok     bool
	saves  int
	failOn int // fail the n-th save (1-based); 0: never
}

func (m *memStore) Load() (int64, bool, error) { return m.start, m.ok, nil }
func (m *memStore) Save(start int64) error {
	m.saves++
	if m.saves == m.failOn {
		return errors.New("flash full")
	}
	m.start, m.ok = start, true
	return nil
}

// TestCounterNeverReuses: across reboots (a new Counter on the same
// store) at any point of a block, every counter handed out is larger than
// every one handed out before; the store is written once per block; a
// failed save hands out nothing.
func TestCounterNeverReuses(t *testing.T) {
	st := &memStore{}
	var last int64
	for boot := range 7 {
		c, err := NewCounter(st, 10)
		if err != nil {
			t.Fatal(err)
		}
		for range boot * 4 { // reboot after 0, 4, 8, ... messages
			n, err := c.Next()
			if err != nil {
				t.Fatal(err)
			}
			if n <= last {
				t.Fatalf("boot %d: counter %d after %d", boot, n, last)
			}
			last = n
		}
	}
	if st.saves > 7+(4*21)/10+1 {
		t.Fatalf("%d saves: more than one per block and boot", st.saves)
	}

	st = &memStore{failOn: 2}
	c, err := NewCounter(st, 3)
	if err != nil {
		t.Fatal(err)
	}
	for want := int64(1); want <= 3; want++ {
		if n, err := c.Next(); err != nil || n != want {
			t.Fatalf("Next = %d, %v; want %d", n, err, want)
		}
	}
	if n, err := c.Next(); err == nil {
		t.Fatalf("Next handed out %d although its block could not be saved", n)
	}
	if n, err := c.Next(); err != nil || n != 4 {
		t.Fatalf("Next after the failed save = %d, %v; want 4 (saved now)", n, err)
	}
}

// TestFileCounterStore: the file store round-trips and survives a
// "reboot".
func TestFileCounterStore(t *testing.T) {
	f := FileCounterStore(filepath.Join(t.TempDir(), "counter"))
	if _, ok, err := f.Load(); ok || err != nil {
		t.Fatalf("empty store: ok %v, %v", ok, err)
	}
	c, err := NewCounter(f, 5)
	if err != nil {
		t.Fatal(err)
	}
	for range 7 {
		if _, err := c.Next(); err != nil {
			t.Fatal(err)
		}
	}
	c, err = NewCounter(f, 5)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := c.Next(); err != nil || n != 11 {
		t.Fatalf("first counter after reboot = %d, %v; want 11 (block 6-10 may have been used)", n, err)
	}
	if err := os.WriteFile(string(f), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewCounter(f, 5); err == nil {
		t.Fatal("a corrupt counter file was accepted")
	}
}

// TestCounterVectors signs every well-formed counter-mode vector of
// testdata/vectors.json with the SDK's signer and compares the signature.
func TestCounterVectors(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		CounterVectors []struct {
			Name, Secret, Message, Expected, Signature string
		} `json:"counter_vectors"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, v := range file.CounterVectors {
		if v.Expected == "malformed" || v.Name == "replay_counter_zero" { // a Counter never hands out 0
			continue
		}
		e, err := envelope.Parse([]byte(v.Message), envelope.Limits{})
		if err != nil || !e.IsCounter() {
			t.Fatalf("%s: %v", v.Name, err)
		}
		d := &Device{id: e.DeviceID, signMAC: envelope.NewMAC([]byte(v.Secret))}
		d.counter, err = NewCounter(&memStore{start: e.Counter - 1, ok: e.Counter > 1}, 1)
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		m, err := d.SignCounter(e.Payload)
		if err != nil {
			t.Fatal(err)
		}
		got, err := envelope.Parse(m.Raw, envelope.Limits{})
		if err != nil || got.Counter != e.Counter {
			t.Fatalf("%s: signed counter %d, %v; want %d", v.Name, got.Counter, err, e.Counter)
		}
		got.MessageID = e.MessageID // the vector's id, to compare signatures
		if sig := envelope.Sign([]byte(v.Secret), &got); hex.EncodeToString(sig[:]) != v.Signature {
			t.Fatalf("%s: signature %x, want %s", v.Name, sig, v.Signature)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no counter vectors")
	}
}
