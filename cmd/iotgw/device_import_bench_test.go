package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
	"github.com/iotgw/iotgw/pkg/pki"
)

// BenchmarkDeviceImport10000 runs "iotgw device import" (in process) on a
// JSON-lines file of 10,000 devices, secrets sealed under a KEK and
// generated into --secrets-out, on each storage engine, without CSRs and
// with one ECDSA P-256 CSR per device (10,000 certificates signed). One op
// is one import into an empty registry; devices/s is the rate.
func BenchmarkDeviceImport10000(b *testing.B) {
	const n = 10_000
	dir := b.TempDir()
	var plain, withCSR strings.Builder
	for i := range n {
		id := fmt.Sprintf("bulk-%05d", i)
		fmt.Fprintf(&plain, "{\"id\":%q}\n", id)
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, k)
		if err != nil {
			b.Fatal(err)
		}
		line, _ := json.Marshal(map[string]string{"id": id, "csr": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
		withCSR.Write(line)
		withCSR.WriteByte('\n')
	}
	files := map[string]string{"plain": filepath.Join(dir, "plain.jsonl"), "csr": filepath.Join(dir, "csr.jsonl")}
	for name, body := range map[string]string{"plain": plain.String(), "csr": withCSR.String()} {
		if err := os.WriteFile(files[name], []byte(body), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	kek := filepath.Join(dir, "kek")
	if err := execCLI(b, "kek", "new", kek); err != nil {
		b.Fatal(err)
	}
	b.Setenv("IOTGW_SECURITY_KEK_FILE", kek)
	b.Setenv("IOTGW_REGISTRY_PATH", "")
	for _, engine := range []string{"sqlite", "postgres"} {
		for _, kind := range []string{"plain", "csr"} {
			b.Run(engine+"/"+kind, func(b *testing.B) {
				for b.Loop() {
					b.StopTimer()
					op := b.TempDir()
					args := []string{"device", "import", files[kind], "--secrets-out", filepath.Join(op, "secrets.jsonl")}
					if engine == "postgres" {
						b.Setenv("IOTGW_STORAGE_ENGINE", "postgres")
						b.Setenv("IOTGW_STORAGE_DSN", pgtest.New(b))
					} else {
						b.Setenv("IOTGW_STORAGE_ENGINE", "")
						args = append(args, "--db", filepath.Join(op, "registry.db"))
					}
					if kind == "csr" {
						certs := filepath.Join(op, "certs")
						if err := pki.Init(certs, nil, time.Now()); err != nil {
							b.Fatal(err)
						}
						args = append(args, "--certs", certs)
					}
					b.StartTimer()
					if err := execCLI(b, args...); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "devices/s")
			})
		}
	}
}

// execCLI runs iotgw with args in process and returns its error with its
// stderr.
func execCLI(b *testing.B, args ...string) error {
	b.Helper()
	root := newRoot()
	var out, errOut bytes.Buffer
	root.SetIn(strings.NewReader(""))
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	if err := root.ExecuteContext(context.Background()); err != nil {
		return fmt.Errorf("%w\n%s", err, errOut.String())
	}
	return nil
}
