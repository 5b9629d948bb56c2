package pki_test

import (
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
)

func TestInitWritesEmptyCRL(t *testing.T) {
	dir := initDir(t)
	list, err := pki.ReadCRL(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.RevokedCertificateEntries); n != 0 {
		t.Errorf("new CRL lists %d certificates, want 0", n)
	}
	ca := readCert(t, pki.Paths(dir).CACert)
	if !list.NextUpdate.Equal(ca.NotAfter) {
		t.Errorf("CRL nextUpdate %v, want the CA's expiry %v (an expired CRL locks every client out)", list.NextUpdate, ca.NotAfter)
	}
	if !list.ThisUpdate.Before(now) {
		t.Errorf("CRL thisUpdate %v is not before the issue time %v", list.ThisUpdate, now)
	}
	fi, err := os.Stat(pki.Paths(dir).CRL)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("crl.pem mode %v, want 0644 (Mosquitto reads it as the mosquitto user)", fi.Mode().Perm())
	}
}

func TestRevoke(t *testing.T) {
	dir := initDir(t)
	for _, id := range []string{"d1", "d2"} {
		if err := pki.Issue(dir, id, now); err != nil {
			t.Fatal(err)
		}
	}
	crt, _ := pki.DeviceCert(dir, "d1")
	d1 := readCert(t, crt)
	at := now.Add(time.Minute)
	r, err := pki.Revoke(dir, "d1", at)
	if err != nil {
		t.Fatal(err)
	}
	if r.Serial.Cmp(d1.SerialNumber) != 0 || r.CRL != pki.Paths(dir).CRL {
		t.Errorf("Revoke = %+v, want serial %x in %s", r, d1.SerialNumber, pki.Paths(dir).CRL)
	}
	list, err := pki.ReadCRL(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.RevokedCertificateEntries) != 1 || list.RevokedCertificateEntries[0].SerialNumber.Cmp(d1.SerialNumber) != 0 {
		t.Fatalf("CRL entries %+v, want d1's serial only", list.RevokedCertificateEntries)
	}
	if !list.RevokedCertificateEntries[0].RevocationTime.Equal(at) {
		t.Errorf("revocation time %v, want %v", list.RevokedCertificateEntries[0].RevocationTime, at)
	}
	if list.Number.Cmp(big.NewInt(2)) != 0 {
		t.Errorf("CRL number %v, want 2", list.Number)
	}
	if fi, _ := os.Stat(pki.Paths(dir).CRL); fi.Mode().Perm() != 0o644 {
		t.Errorf("crl.pem mode %v after Revoke, want 0644", fi.Mode().Perm())
	}

	tests := []struct {
		name string
		id   string
		want error
	}{
		{"twice", "d1", pki.ErrAlreadyRevoked},
		{"no certificate", "d3", fs.ErrNotExist},
		{"the gateway", "gateway", pki.ErrReservedDeviceID},
		{"bad id", "../ca", pki.ErrInvalidDeviceID},
		{"dots", "..", pki.ErrInvalidDeviceID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := pki.Revoke(dir, tc.id, at); !errors.Is(err, tc.want) {
				t.Fatalf("Revoke(%q) = %v, want %v", tc.id, err, tc.want)
			}
			list, err := pki.ReadCRL(dir)
			if err != nil || len(list.RevokedCertificateEntries) != 1 {
				t.Fatalf("CRL changed by a refused Revoke: %v", err)
			}
		})
	}
}

// TestRevokeConcurrent: revocations at once all end up on the CRL.
func TestRevokeConcurrent(t *testing.T) {
	dir := initDir(t)
	const n = 8
	for i := range n {
		if err := pki.Issue(dir, fmt.Sprintf("d%d", i), now); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := pki.Revoke(dir, fmt.Sprintf("d%d", i), now); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	list, err := pki.ReadCRL(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(list.RevokedCertificateEntries) != n {
		t.Errorf("CRL lists %d certificates, want %d", len(list.RevokedCertificateEntries), n)
	}
}

func TestEnsureCRL(t *testing.T) {
	dir := initDir(t)
	if wrote, err := pki.EnsureCRL(dir, now); err != nil || wrote {
		t.Fatalf("EnsureCRL on a PKI with a CRL = %v, %v; want false, nil", wrote, err)
	}
	if err := os.Remove(pki.Paths(dir).CRL); err != nil {
		t.Fatal(err)
	}
	if wrote, err := pki.EnsureCRL(dir, now); err != nil || !wrote {
		t.Fatalf("EnsureCRL on a PKI without a CRL = %v, %v; want true, nil", wrote, err)
	}
	if _, err := pki.ReadCRL(dir); err != nil {
		t.Fatal(err)
	}
}

func TestReadCRLRefusesForeignCRL(t *testing.T) {
	dir, other := initDir(t), initDir(t)
	b, err := os.ReadFile(pki.Paths(other).CRL)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pki.Paths(dir).CRL, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.ReadCRL(dir); err == nil {
		t.Fatal("ReadCRL accepted a CRL signed by another CA")
	}
}
