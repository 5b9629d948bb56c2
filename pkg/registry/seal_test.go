package registry

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/sqlitex"
)

func testKEK(t *testing.T, fill byte) *KEK {
	t.Helper()
	k, err := ParseKEK(bytes.Repeat([]byte{fill}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rawDB opens the registry file directly, as an attacker with the file would.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sqlitex.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func blob(t *testing.T, db *sql.DB, dev string, key int64) []byte {
	t.Helper()
	var b []byte
	if err := db.QueryRow(`SELECT secret FROM device_keys WHERE device_id = ? AND key_id = ?`, dev, key).Scan(&b); err != nil {
		t.Fatal(err)
	}
	return b
}

func setBlob(t *testing.T, db *sql.DB, dev string, key int64, b []byte) {
	t.Helper()
	if _, err := db.Exec(`UPDATE device_keys SET secret = ? WHERE device_id = ? AND key_id = ?`, b, dev, key); err != nil {
		t.Fatal(err)
	}
}

// grepFiles reports which of path, path-wal, path-shm contain any secret,
// raw or hex-encoded.
func grepFiles(t *testing.T, path string, secrets []string) []string {
	t.Helper()
	var found []string
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) || bytes.Contains(b, []byte(hex.EncodeToString([]byte(s)))) {
				found = append(found, filepath.Base(p)+" holds "+s[:6]+"…")
			}
		}
	}
	return found
}

func TestParseKEK(t *testing.T) {
	raw := bytes.Repeat([]byte{7}, 32)
	hx := []byte(hex.EncodeToString(raw))
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"32 raw bytes", raw, true},
		{"64 hex", hx, true},
		{"64 hex and a newline", append(append([]byte{}, hx...), '\n'), true},
		{"64 hex and CRLF", append(append([]byte{}, hx...), '\r', '\n'), true},
		{"31 bytes", raw[:31], false},
		{"63 hex", hx[:63], false},
		{"64 non-hex", bytes.Repeat([]byte("z"), 64), false},
		{"empty", nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKEK(tc.in)
			if tc.ok != (err == nil) {
				t.Fatalf("ParseKEK: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrBadKEK) || len(tc.in) > 0 && strings.Contains(err.Error(), string(tc.in))) {
				t.Fatalf("error %q: want ErrBadKEK, never the contents", err)
			}
			if tc.ok && k.Fingerprint() != testKEK(t, 7).Fingerprint() {
				t.Fatal("raw and hex forms of one KEK differ in fingerprint")
			}
		})
	}
}

func TestLoadKEKRefusesOpenFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(p, bytes.Repeat([]byte{1}, 32), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKEK(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("LoadKEK of a 0644 file: %v", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKEK(p); err != nil {
		t.Fatal(err)
	}
}

// TestSealNonceIsFresh: sealing one secret for one device and key twice
// gives two different nonces (so two different blobs), and both open. A
// fixed or reused GCM nonce under one key would leak the XOR of secrets and
// allow forgeries.
func TestSealNonceIsFresh(t *testing.T) {
	k := testKEK(t, 3)
	secret := bytes.Repeat([]byte{0x5a}, 32)
	n := k.aead.NonceSize()
	seen := map[string]bool{}
	for i := 0; i < 64; i++ {
		blob, err := k.seal("dev-1", 1, secret)
		if err != nil {
			t.Fatal(err)
		}
		nonce := string(blob[1 : 1+n])
		if seen[nonce] {
			t.Fatalf("seal %d reused nonce %x", i, nonce)
		}
		seen[nonce] = true
		plain, err := k.open("dev-1", 1, blob)
		if err != nil || !bytes.Equal(plain, secret) {
			t.Fatalf("open seal %d: %v", i, err)
		}
	}
}

// TestSecretsSealedAtRest: with a KEK, no secret is in the database files
// (main, WAL, SHM), and the cache still serves the right secrets.
func TestSecretsSealedAtRest(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	r, err := Open(ctx, path, WithKEK(testKEK(t, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var secrets []string
	for _, id := range []string{"a", "b", "c"} {
		s, _ := NewSecret()
		secrets = append(secrets, s)
		if err := r.Add(ctx, id, s); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := NewSecret()
	secrets = append(secrets, s)
	if _, err := r.Rotate(ctx, "a", s, time.Hour); err != nil {
		t.Fatal(err)
	}
	if !r.Sealed() {
		t.Fatal("Sealed() = false with a KEK")
	}
	if found := grepFiles(t, path, secrets); len(found) > 0 {
		t.Fatalf("secrets on disk while open: %v", found)
	}
	c, err := NewCache(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, _ := c.Device(ctx, "a")
	if len(d.Keys) != 2 || string(d.Keys[0].Secret) != secrets[0] || string(d.Keys[1].Secret) != secrets[3] || string(d.Secret) != secrets[3] {
		t.Fatalf("device a keys do not open to their secrets")
	}
}

// TestSwappedRowsDoNotOpen: an attacker with write access swaps two rows'
// ciphertexts (between devices, or between keys of one device). Loading
// fails with an error naming the device, never serving a wrong key.
func TestSwappedRowsDoNotOpen(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name         string
		a, b         [2]any // device, key
		wantInErrorA string
	}{
		{"between devices", [2]any{"alpha", int64(1)}, [2]any{"beta", int64(1)}, "device alpha key 1"},
		{"between keys of a device", [2]any{"alpha", int64(1)}, [2]any{"alpha", int64(2)}, "device alpha key 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "r.db")
			r, err := Open(ctx, path, WithKEK(testKEK(t, 1)))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			for _, id := range []string{"alpha", "beta"} {
				s, _ := NewSecret()
				if err := r.Add(ctx, id, s); err != nil {
					t.Fatal(err)
				}
			}
			s, _ := NewSecret()
			if _, err := r.Rotate(ctx, "alpha", s, time.Hour); err != nil {
				t.Fatal(err)
			}
			c, err := NewCache(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			db := rawDB(t, path)
			ba := blob(t, db, tc.a[0].(string), tc.a[1].(int64))
			bb := blob(t, db, tc.b[0].(string), tc.b[1].(int64))
			setBlob(t, db, tc.a[0].(string), tc.a[1].(int64), bb)
			setBlob(t, db, tc.b[0].(string), tc.b[1].(int64), ba)
			before, _ := c.Device(ctx, "alpha")
			_, err = c.Refresh(ctx)
			if !errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), tc.wantInErrorA) {
				t.Fatalf("Refresh after swap: %v, want ErrOpen naming %q", err, tc.wantInErrorA)
			}
			// Fail closed: the device is rejected, never served the
			// secret remembered from before the swap.
			after, _ := c.Device(ctx, "alpha")
			if !after.KeyUnavailable || after.Secret != nil || after.Keys != nil || bytes.Equal(before.Secret, after.Secret) {
				t.Fatalf("alpha after a swap: unavailable %v, %d keys; want unavailable and no key", after.KeyUnavailable, len(after.Keys))
			}
			if _, err := c.Stale(); err == nil {
				t.Fatal("the cache does not say it is stale")
			}
			if _, err := NewCache(ctx, r); !errors.Is(err, ErrOpen) {
				t.Fatalf("NewCache after swap: %v, want ErrOpen", err)
			}
		})
	}
}

// TestWrongOrMissingKEK: a registry sealed under one KEK refuses another
// with one line naming both fingerprints, and without a KEK it opens for
// metadata only.
func TestWrongOrMissingKEK(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	k1, k2 := testKEK(t, 1), testKEK(t, 2)
	r, err := Open(ctx, path, WithKEK(k1))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Add(ctx, "a", "a-secret-of-sixteen-plus"); err != nil {
		t.Fatal(err)
	}
	r.Close()

	_, err = Open(ctx, path, WithKEK(k2))
	if !errors.Is(err, ErrWrongKEK) || strings.Contains(err.Error(), "\n") ||
		!strings.Contains(err.Error(), k1.Short()) || !strings.Contains(err.Error(), k2.Short()) {
		t.Fatalf("Open with the wrong KEK: %v", err)
	}
	r, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("Open without a KEK: %v", err)
	}
	defer r.Close()
	if !r.Sealed() {
		t.Fatal("Sealed() = false for a sealed registry")
	}
	if _, err := r.Get(ctx, "a"); err != nil {
		t.Fatalf("Get without a KEK: %v", err)
	}
	if err := r.Add(ctx, "b", "b-secret-of-sixteen-plus"); !errors.Is(err, ErrSealed) {
		t.Fatalf("Add without a KEK: %v, want ErrSealed", err)
	}
	if _, err := NewCache(ctx, r); !errors.Is(err, ErrSealed) {
		t.Fatalf("NewCache without a KEK: %v, want ErrSealed", err)
	}
}

// TestSealPlaintextRegistry: a registry written without a KEK refuses a
// KEK until Reseal (kek rotate --new with no current KEK) seals it; then
// the plaintext is gone from the files.
func TestSealPlaintextRegistry(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	k := testKEK(t, 3)
	r, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	var secrets []string
	for _, id := range []string{"a", "b"} {
		s, _ := NewSecret()
		secrets = append(secrets, s)
		if err := r.Add(ctx, id, s); err != nil {
			t.Fatal(err)
		}
	}
	if r.Sealed() {
		t.Fatal("Sealed() = true without a KEK")
	}
	r.Close()
	if found := grepFiles(t, path, secrets); len(found) == 0 {
		t.Fatal("plaintext registry: secrets not found on disk; the grep cannot see them")
	}
	if _, err := Open(ctx, path, WithKEK(k)); !errors.Is(err, ErrUnsealed) || !strings.Contains(err.Error(), "kek rotate") {
		t.Fatalf("Open of a plaintext registry with a KEK: %v, want ErrUnsealed naming kek rotate", err)
	}
	r, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.Reseal(ctx, k); err != nil || n != 2 {
		t.Fatalf("Reseal: %d, %v", n, err)
	}
	r.Close()
	if found := grepFiles(t, path, secrets); len(found) > 0 {
		t.Fatalf("after sealing: %v", found)
	}
	r, err = Open(ctx, path, WithKEK(k))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := NewCache(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if d, _ := c.Device(ctx, "b"); string(d.Secret) != secrets[1] {
		t.Fatal("sealed secret does not open to the original")
	}
}

// TestResealOneTransaction: kek rotate re-seals every row; the old KEK no
// longer opens them; a row that fails mid-way leaves everything as it was.
func TestResealOneTransaction(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	k1, k2 := testKEK(t, 1), testKEK(t, 2)
	r, err := Open(ctx, path, WithKEK(k1))
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"a", "b", "c", "d"}
	secrets := map[string]string{}
	for _, id := range ids {
		s, _ := NewSecret()
		secrets[id] = s
		if err := r.Add(ctx, id, s); err != nil {
			t.Fatal(err)
		}
	}
	db := rawDB(t, path)
	snapshot := func() map[string][]byte {
		m := map[string][]byte{}
		for _, id := range ids {
			m[id] = blob(t, db, id, 1)
		}
		return m
	}
	before := snapshot()

	// Mid-way failure: "c" (third in order) holds a blob that does not open.
	good := before["c"]
	setBlob(t, db, "c", 1, before["d"])
	if _, err := r.Reseal(ctx, k2); !errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), "device c") {
		t.Fatalf("Reseal with a bad row: %v, want ErrOpen naming device c", err)
	}
	after := snapshot()
	for _, id := range []string{"a", "b", "d"} {
		if !bytes.Equal(before[id], after[id]) {
			t.Fatalf("row %s changed by a failed Reseal", id)
		}
	}
	if fp, _ := fingerprint(ctx, db); fp != k1.Fingerprint() {
		t.Fatal("fingerprint changed by a failed Reseal")
	}

	setBlob(t, db, "c", 1, good)
	if n, err := r.Reseal(ctx, k2); err != nil || n != len(ids) {
		t.Fatalf("Reseal: %d, %v", n, err)
	}
	r.Close()
	after = snapshot()
	for _, id := range ids {
		if bytes.Equal(before[id], after[id]) {
			t.Fatalf("row %s not re-sealed", id)
		}
		if _, err := k1.open(id, 1, after[id]); !errors.Is(err, ErrOpen) {
			t.Fatalf("old KEK still opens row %s: %v", id, err)
		}
		if p, err := k2.open(id, 1, after[id]); err != nil || string(p) != secrets[id] {
			t.Fatalf("new KEK on row %s: %v", id, err)
		}
	}
	if _, err := Open(ctx, path, WithKEK(k1)); !errors.Is(err, ErrWrongKEK) {
		t.Fatalf("Open with the old KEK after rotation: %v", err)
	}
}

// TestMigrateV1: a registry written by the single-key schema keeps its
// devices and secrets.
func TestMigrateV1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	db, err := sqlitex.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := sqlitex.Migrate(ctx, db, migrations[:1]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO devices(device_id, secret, enabled, created_at) VALUES('old', 'an-old-secret-0123456789', 0, 1700000000)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	r, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := NewCache(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Device(ctx, "old")
	if err != nil || d.Enabled || string(d.Secret) != "an-old-secret-0123456789" || len(d.Keys) != 1 || d.Keys[0].ID != 1 {
		t.Fatalf("migrated device: %+v, %v", d.Enabled, err)
	}
}

// TestDeviceSecrets: the read-only reader for sim returns each device's
// newest secret, and needs the right KEK for a sealed registry.
func TestDeviceSecrets(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	k1 := testKEK(t, 1)
	r, err := Open(ctx, path, WithKEK(k1))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Add(ctx, "a", "a-first-secret-0123456789"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Rotate(ctx, "a", "a-second-secret-0123456789", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(ctx, "b", "b-secret-0123456789"); err != nil {
		t.Fatal(err)
	}
	got, err := DeviceSecrets(ctx, path, k1)
	if err != nil || len(got) != 2 || string(got["a"]) != "a-second-secret-0123456789" || string(got["b"]) != "b-secret-0123456789" {
		t.Fatalf("DeviceSecrets: %d secrets, %v", len(got), err)
	}
	if _, err := DeviceSecrets(ctx, path, nil); !errors.Is(err, ErrSealed) {
		t.Fatalf("without the KEK: %v", err)
	}
	if _, err := DeviceSecrets(ctx, path, testKEK(t, 2)); !errors.Is(err, ErrWrongKEK) {
		t.Fatalf("with another KEK: %v", err)
	}
}
