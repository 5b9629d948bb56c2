package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
)

// TestAddManyEngines runs AddMany on each engine, with and without a KEK:
// all or nothing, existing devices refused or skipped, a failing
// BeforeCommit commits nothing, and the cache serves what was added.
func TestAddManyEngines(t *testing.T) {
	for _, e := range regEngines() {
		for _, sealed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sealed=%v", e.name, sealed), func(t *testing.T) {
				ctx := context.Background()
				var opts []Option
				if sealed {
					opts = append(opts, WithKEK(testKEK(t, 9)))
				}
				r, raw := e.open(t, opts...)
				const old = "an-old-secret-of-enough-length"
				if err := r.Add(ctx, "old", old); err != nil {
					t.Fatal(err)
				}
				devs := []NewDevice{
					{ID: "n1", Secret: "secret-number-one-0001"},
					{ID: "old", Secret: "secret-for-old-replaced?"},
					{ID: "n2", Secret: "secret-number-two-0002", Disabled: true},
				}
				count := func() int {
					var n int
					if err := raw.QueryRow(`SELECT COUNT(*) FROM devices`).Scan(&n); err != nil {
						t.Fatal(err)
					}
					return n
				}

				// An existing device refuses the whole batch and names it.
				_, _, err := r.AddMany(ctx, devs, BulkOptions{})
				var ee *ExistingError
				if !errors.As(err, &ee) || !errors.Is(err, ErrExists) || len(ee.IDs) != 1 || ee.IDs[0] != "old" {
					t.Fatalf("AddMany over an existing device = %v", err)
				}
				if n := count(); n != 1 {
					t.Fatalf("%d devices after a refused batch, want 1", n)
				}
				// Bad input refuses the batch before any write.
				for _, bad := range [][]NewDevice{
					{{ID: "ok", Secret: "a-good-secret-000000"}, {ID: "bad/id", Secret: "a-good-secret-000000"}},
					{{ID: "ok", Secret: "short"}},
					{{ID: "ok", Secret: "a-good-secret-000000"}, {ID: "ok", Secret: "a-good-secret-000001"}},
				} {
					if _, _, err := r.AddMany(ctx, bad, BulkOptions{}); err == nil {
						t.Fatalf("AddMany(%v) accepted", bad)
					}
				}
				// A BeforeCommit failure commits nothing.
				boom := errors.New("boom")
				var saw []NewDevice
				_, _, err = r.AddMany(ctx, devs, BulkOptions{SkipExisting: true, BeforeCommit: func(a []NewDevice) error { saw = a; return boom }})
				if !errors.Is(err, boom) || len(saw) != 2 || count() != 1 {
					t.Fatalf("BeforeCommit failure: err %v, saw %d, %d devices", err, len(saw), count())
				}

				added, skipped, err := r.AddMany(ctx, devs, BulkOptions{SkipExisting: true})
				if err != nil || len(added) != 2 || len(skipped) != 1 || skipped[0] != "old" {
					t.Fatalf("AddMany skip-existing = %v %v %v", added, skipped, err)
				}
				var stored []byte
				if err := raw.QueryRow(r.q(`SELECT secret FROM device_keys WHERE device_id = ?`), "n1").Scan(&stored); err != nil {
					t.Fatal(err)
				}
				if got := bytes.Contains(stored, []byte("secret-number-one")); got == sealed {
					t.Fatalf("stored in the clear = %v with sealed = %v", got, sealed)
				}
				// More than two statements' worth: every batch lands.
				many := make([]NewDevice, 2*bulkBatch+1)
				for i := range many {
					many[i] = NewDevice{ID: fmt.Sprintf("m%04d", i), Secret: fmt.Sprintf("many-secret-%08d", i)}
				}
				if added, _, err := r.AddMany(ctx, many, BulkOptions{}); err != nil || len(added) != len(many) {
					t.Fatalf("AddMany of %d: %d added, %v", len(many), len(added), err)
				}
				if n := count(); n != 3+len(many) {
					t.Fatalf("%d devices, want %d", n, 3+len(many))
				}
				c, err := NewCache(ctx, r)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				for _, tc := range []struct {
					id, secret string
					enabled    bool
				}{{"n1", "secret-number-one-0001", true}, {"n2", "secret-number-two-0002", false}, {"old", old, true},
					{"m0000", "many-secret-00000000", true}, {"m0400", "many-secret-00000400", true}} {
					d, err := c.Device(ctx, tc.id)
					if err != nil || d.Enabled != tc.enabled || len(d.Keys) != 1 || string(d.Keys[0].Secret) != tc.secret {
						t.Errorf("cached %s = %+v, %v", tc.id, d, err)
					}
				}
			})
		}
	}
}
