package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
)

// BenchmarkSignCSRs10000 signs 10,000 device CSRs (ECDSA P-256) with one
// SignBatch, as "iotgw device import" does for a file with a csr column:
// each request is checked, each certificate signed and linked into place,
// and the batch synced once.
// One op is 10,000 certificates into a fresh PKI; certs/s is the rate.
func BenchmarkSignCSRs10000(b *testing.B) {
	const n = 10_000
	reqs := make([]pki.CSRRequest, n)
	for i := range reqs {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: fmt.Sprintf("bulk-%05d", i)}}, k)
		if err != nil {
			b.Fatal(err)
		}
		reqs[i] = pki.CSRRequest{DeviceID: fmt.Sprintf("bulk-%05d", i), CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})}
	}
	now := time.Now()
	for b.Loop() {
		b.StopTimer()
		dir := filepath.Join(b.TempDir(), "certs")
		if err := pki.Init(dir, nil, now); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		s, err := pki.OpenSigner(dir)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.SignBatch(reqs, pki.DefaultCSRDays, now); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}
