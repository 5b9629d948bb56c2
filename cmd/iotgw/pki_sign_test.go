package main

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/pki"
)

// opensslCSR makes a key and a CSR with openssl, as a device would, and
// returns the CSR file. subj is the request's subject ("/CN=sensor_007").
func opensslCSR(t *testing.T, dir, name, subj string, keyArgs ...string) string {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	csr := filepath.Join(dir, name+".csr")
	args := append([]string{"req", "-new", "-nodes", "-keyout", filepath.Join(dir, name+".key"), "-subj", subj, "-out", csr}, keyArgs...)
	if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl %v: %v\n%s", args, err, out)
	}
	return csr
}

var p256 = []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"}

func TestPKISignCSR(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "registry.db")
	certs := filepath.Join(dir, "certs")
	if r := runCLI(t, "", "pki", "init", "--dir", certs); r.code != 0 {
		t.Fatalf("pki init: %v", r.err)
	}
	good := opensslCSR(t, dir, "sensor_007", "/CN=sensor_007", p256...)

	// Refused before the registry exists: no unaudited issuance.
	r := runCLI(t, "", "pki", "sign", "sensor_007", "--csr", good, "--dir", certs, "--db", db)
	if r.code != 1 || !strings.Contains(r.err.Error(), "audit trail") {
		t.Fatalf("without a registry: code %d err %v", r.code, r.err)
	}
	if crt, _ := pki.DeviceCert(certs, "sensor_007"); fileExists(crt) {
		t.Fatal("signed although the issuance could not be audited")
	}
	if r := runCLI(t, "", "device", "add", "sensor_000", "--db", db); r.code != 0 {
		t.Fatalf("device add: %v", r.err)
	}

	other := opensslCSR(t, dir, "other", "/CN=sensor_008", p256...)
	weak := opensslCSR(t, dir, "weak", "/CN=sensor_007", "-newkey", "rsa:1024")
	caReq := opensslCSR(t, dir, "careq", "/CN=sensor_009/O=evil", append(p256, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "subjectAltName=DNS:broker")...)
	garbage := filepath.Join(dir, "garbage.csr")
	if err := os.WriteFile(garbage, []byte("not a csr\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, id, csr string
		code          int
		errText       string
	}{
		{"another CN", "sensor_007", other, 2, "CSR Common Name must be exactly the device id"},
		{"weak key", "sensor_007", weak, 2, "RSA of at least 2048 bits"},
		{"not a CSR", "sensor_007", garbage, 2, "not a PEM certificate signing request"},
		{"missing file", "sensor_007", filepath.Join(dir, "nope.csr"), 1, "no such file"},
		{"reserved", "gateway", good, 2, "reserved"},
	} {
		r := runCLI(t, "", "pki", "sign", tc.id, "--csr", tc.csr, "--dir", certs, "--db", db)
		if r.code != tc.code || r.err == nil || !strings.Contains(r.err.Error(), tc.errText) || strings.Contains(r.err.Error(), "\n") {
			t.Errorf("%s: code %d err %v; want %d and one line with %q", tc.name, r.code, r.err, tc.code, tc.errText)
		}
	}
	if r := runCLI(t, "", "pki", "sign", "sensor_007", "--dir", certs, "--db", db); r.code != 2 {
		t.Errorf("without --csr: code %d", r.code)
	}
	if r := runCLI(t, "", "pki", "sign", "sensor_007", "--csr", good, "--days", "0", "--dir", certs, "--db", db); r.code != 2 {
		t.Errorf("--days 0: code %d", r.code)
	}

	r = runCLI(t, "", "pki", "sign", "sensor_007", "--csr", good, "--dir", certs, "--db", db, "--days", "90")
	if r.code != 0 {
		t.Fatalf("pki sign: %v", r.err)
	}
	crt, key := pki.DeviceCert(certs, "sensor_007")
	if r.stdout != "wrote "+crt+"\n" || fileExists(key) {
		t.Errorf("stdout %q; key written: %v", r.stdout, fileExists(key))
	}
	c := readPEMCert(t, crt)
	if c.Subject.CommonName != "sensor_007" {
		t.Errorf("CN %q", c.Subject.CommonName)
	}
	// CA:true and SANs asked for, neither given.
	if r := runCLI(t, "", "pki", "sign", "sensor_009", "--csr", caReq, "--dir", certs, "--db", db); r.code != 0 {
		t.Fatalf("pki sign CA:true request: %v", r.err)
	}
	crt9, _ := pki.DeviceCert(certs, "sensor_009")
	if c := readPEMCert(t, crt9); c.IsCA || len(c.DNSNames) != 0 || strings.Join(c.Subject.Organization, ",") != "iotgw" {
		t.Errorf("request's CA:true, SAN or O copied: IsCA %v DNS %v O %v", c.IsCA, c.DNSNames, c.Subject.Organization)
	}
	if r := runCLI(t, "", "pki", "sign", "sensor_007", "--csr", good, "--dir", certs, "--db", db); r.code != 1 || !strings.Contains(r.err.Error(), "already exists") {
		t.Errorf("twice: code %d err %v", r.code, r.err)
	}
	tail := runCLI(t, "", "audit", "tail", "--db", db, "-n", "10")
	if strings.Count(tail.stdout, "pki.sign") != 2 || !strings.Contains(tail.stdout, "sensor_007") {
		t.Errorf("audit trail:\n%s", tail.stdout)
	}
}

func TestDeviceAddCSR(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "registry.db")
	certs := filepath.Join(dir, "certs")
	if r := runCLI(t, "", "pki", "init", "--dir", certs); r.code != 0 {
		t.Fatalf("pki init: %v", r.err)
	}
	good := opensslCSR(t, dir, "sensor_001", "/CN=sensor_001", p256...)
	other := opensslCSR(t, dir, "other", "/CN=sensor_999", p256...)

	// Refused CSRs register nothing.
	if r := runCLI(t, "", "device", "add", "sensor_001", "--csr", other, "--certs", certs, "--db", db); r.code != 2 {
		t.Fatalf("another CN: code %d err %v", r.code, r.err)
	}
	if fileExists(db) {
		if r := runCLI(t, "", "device", "show", "sensor_001", "--db", db); r.code == 0 {
			t.Fatal("registered although its CSR was refused")
		}
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"with --issue-cert", []string{"--csr", good, "--issue-cert"}},
		{"--days without --csr", []string{"--days", "3"}},
	} {
		args := append([]string{"device", "add", "sensor_001", "--certs", certs, "--db", db}, tc.args...)
		if r := runCLI(t, "", args...); r.code != 2 {
			t.Errorf("%s: code %d err %v", tc.name, r.code, r.err)
		}
	}

	r := runCLI(t, "", "device", "add", "sensor_001", "--csr", good, "--certs", certs, "--db", db)
	if r.code != 0 || !hex64.MatchString(r.stdout) {
		t.Fatalf("add --csr: code %d err %v stdout %q", r.code, r.err, r.stdout)
	}
	crt, key := pki.DeviceCert(certs, "sensor_001")
	if c := readPEMCert(t, crt); c.Subject.CommonName != "sensor_001" || fileExists(key) {
		t.Errorf("CN %q, key written %v", c.Subject.CommonName, fileExists(key))
	}
	tail := runCLI(t, "", "audit", "tail", "--db", db, "-n", "10")
	if !strings.Contains(tail.stdout, "device.add") || !strings.Contains(tail.stdout, "pki.sign") {
		t.Errorf("audit trail:\n%s", tail.stdout)
	}
}

func readPEMCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
