package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
)

func ExampleInit() {
	tmp, err := os.MkdirTemp("", "pki-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "certs")

	if err := pki.Init(dir, []string{"mqtt.example.com"}, time.Now()); err != nil {
		panic(err)
	}
	for _, f := range pki.Paths(dir).All() {
		fmt.Println(filepath.Base(f))
	}
	// Output:
	// ca.key
	// ca.crt
	// broker.key
	// broker.crt
	// gateway.key
	// gateway.crt
	// crl.pem
}

func ExampleIssue() {
	tmp, err := os.MkdirTemp("", "pki-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(tmp)

	if err := pki.Init(tmp, nil, time.Now()); err != nil {
		panic(err)
	}
	if err := pki.Issue(tmp, "sensor-1", time.Now()); err != nil {
		panic(err)
	}
	crt, key := pki.DeviceCert(tmp, "sensor-1")
	fmt.Println(filepath.Rel(tmp, crt))
	fmt.Println(filepath.Rel(tmp, key))
	fmt.Println(pki.Issue(tmp, "bad id", time.Now()))
	// Output:
	// devices/sensor-1.crt <nil>
	// devices/sensor-1.key <nil>
	// issue device certificate "bad id": device id must be 1-64 characters of [A-Za-z0-9_.-], not starting with a dot
}

func ExampleSigner_Sign() {
	tmp, err := os.MkdirTemp("", "pki-example-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(tmp)
	if err := pki.Init(tmp, nil, time.Now()); err != nil {
		panic(err)
	}

	// On the device: a key that never leaves it, and a CSR for its id.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "sensor-7"}}, key)
	if err != nil {
		panic(err)
	}
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})

	// On the operator's machine: sign it; only the certificate is written.
	s, err := pki.OpenSigner(tmp)
	if err != nil {
		panic(err)
	}
	is, err := s.Sign("sensor-7", csr, pki.DefaultCSRDays, time.Now())
	if err != nil {
		panic(err)
	}
	fmt.Println(filepath.Rel(tmp, is.Path))
	fmt.Println(is.Key)
	_, err = s.Sign("sensor-8", csr, pki.DefaultCSRDays, time.Now())
	fmt.Println(err)
	// Output:
	// devices/sensor-7.crt <nil>
	// ECDSA P-256
	// sign CSR for "sensor-8": CSR Common Name must be exactly the device id: it asks for CN "sensor-7", the device id is "sensor-8"
}
