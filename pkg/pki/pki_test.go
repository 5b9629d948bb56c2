package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
)

var now = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// initDir runs Init in a fresh directory below a temporary one, so Init
// has to create it.
func initDir(t *testing.T, hosts ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	if err := pki.Init(dir, hosts, now); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return dir
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("%s: want exactly one CERTIFICATE PEM block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func readKey(t *testing.T, path string) *ecdsa.PrivateKey {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("%s: want a PKCS#8 PRIVATE KEY PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		t.Fatalf("%s: key is %T, want ECDSA P-256", path, k)
	}
	return ec
}

func TestInitAndIssueCertificates(t *testing.T) {
	dir := initDir(t, "broker.example.com", "10.1.2.3", "LOCALHOST", "127.0.0.1")
	if err := pki.Issue(dir, "sensor-1", now); err != nil {
		t.Fatalf("Issue: %v", err)
	}
	files := pki.Paths(dir)
	ca := readCert(t, files.CACert)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	devCrt, devKey := pki.DeviceCert(dir, "sensor-1")

	if !ca.IsCA || !ca.MaxPathLenZero || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA: IsCA=%v MaxPathLenZero=%v KeyUsage=%v", ca.IsCA, ca.MaxPathLenZero, ca.KeyUsage)
	}
	if got, want := ca.NotAfter, now.Add(pki.CAValidity); !got.Equal(want) {
		t.Errorf("CA NotAfter = %v, want %v", got, want)
	}
	if !readKey(t, files.CAKey).PublicKey.Equal(ca.PublicKey) {
		t.Errorf("ca.key does not match ca.crt")
	}

	tests := []struct {
		name     string
		crt, key string
		cn       string
		usage    x509.ExtKeyUsage
		dnsNames []string
		ips      []string
	}{
		{"broker", files.BrokerCert, files.BrokerKey, "broker", x509.ExtKeyUsageServerAuth,
			[]string{"localhost", "broker.example.com"}, []string{"127.0.0.1", "::1", "10.1.2.3"}},
		{"gateway", files.GatewayCert, files.GatewayKey, "gateway", x509.ExtKeyUsageClientAuth, nil, nil},
		{"device", devCrt, devKey, "sensor-1", x509.ExtKeyUsageClientAuth, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := readCert(t, tc.crt)
			if !readKey(t, tc.key).PublicKey.Equal(c.PublicKey) {
				t.Errorf("key does not match certificate")
			}
			if c.Subject.CommonName != tc.cn {
				t.Errorf("CN = %q, want %q", c.Subject.CommonName, tc.cn)
			}
			if c.IsCA {
				t.Errorf("leaf is a CA")
			}
			if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{tc.usage}) {
				t.Errorf("ExtKeyUsage = %v, want [%v]", c.ExtKeyUsage, tc.usage)
			}
			if !slices.Equal(c.DNSNames, tc.dnsNames) {
				t.Errorf("DNSNames = %q, want %q", c.DNSNames, tc.dnsNames)
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tc.ips) {
				t.Errorf("IPAddresses = %q, want %q", ips, tc.ips)
			}
			if got, want := c.NotAfter, now.Add(pki.LeafValidity); !got.Equal(want) {
				t.Errorf("NotAfter = %v, want %v", got, want)
			}
			opts := x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{tc.usage}}
			if _, err := c.Verify(opts); err != nil {
				t.Errorf("does not chain to the CA: %v", err)
			}
			opts.CurrentTime = now.Add(pki.LeafValidity + time.Hour)
			if _, err := c.Verify(opts); err == nil {
				t.Errorf("still valid after LeafValidity")
			}
			for _, name := range tc.dnsNames {
				if err := c.VerifyHostname(name); err != nil {
					t.Errorf("VerifyHostname(%q): %v", name, err)
				}
			}
			for _, ip := range tc.ips {
				if err := c.VerifyHostname(ip); err != nil {
					t.Errorf("VerifyHostname(%q): %v", ip, err)
				}
			}
		})
	}
}

func TestFileModes(t *testing.T) {
	dir := initDir(t)
	if err := pki.Issue(dir, "d1", now); err != nil {
		t.Fatal(err)
	}
	files := pki.Paths(dir)
	devCrt, devKey := pki.DeviceCert(dir, "d1")
	tests := []struct {
		path string
		mode os.FileMode
	}{
		{dir, os.ModeDir | 0o755},
		{files.CACert, 0o644},
		{files.CAKey, 0o600},
		{files.BrokerCert, 0o644},
		{files.BrokerKey, 0o640},
		{files.GatewayCert, 0o644},
		{files.GatewayKey, 0o600},
		{devCrt, 0o644},
		{devKey, 0o600},
	}
	for _, tc := range tests {
		t.Run(filepath.Base(tc.path), func(t *testing.T) {
			fi, err := os.Stat(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != tc.mode {
				t.Errorf("mode = %v, want %v", fi.Mode(), tc.mode)
			}
		})
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

// TestBrokerKeyGroup checks that broker.key belongs to the mosquitto group
// when the group exists and the test runs as root (who may chown).
func TestBrokerKeyGroup(t *testing.T) {
	g, err := user.LookupGroup(pki.BrokerGroup)
	if err != nil || os.Geteuid() != 0 {
		t.Skipf("needs root and a %q group", pki.BrokerGroup)
	}
	dir := initDir(t)
	fi, err := os.Stat(pki.Paths(dir).BrokerKey)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if got := strconv.Itoa(int(st.Gid)); got != g.Gid {
		t.Errorf("broker.key gid = %s, want %s (%s)", got, g.Gid, pki.BrokerGroup)
	}
	if st.Uid != 0 {
		t.Errorf("broker.key uid = %d, want 0", st.Uid)
	}
}

func TestInitRefusesExistingCA(t *testing.T) {
	dir := initDir(t)
	files := pki.Paths(dir)
	before := make(map[string][]byte)
	for _, f := range files.All() {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		before[f] = b
	}
	err := pki.Init(dir, nil, now.Add(time.Hour))
	if !errors.Is(err, pki.ErrExists) {
		t.Fatalf("second Init: err = %v, want ErrExists", err)
	}
	for f, b := range before {
		after, err := os.ReadFile(f)
		if err != nil || string(after) != string(b) {
			t.Errorf("%s changed by a refused Init", f)
		}
	}
}

func TestInitErrors(t *testing.T) {
	tests := []struct {
		name  string
		hosts []string
		want  error
	}{
		{"empty host", []string{""}, pki.ErrInvalidHost},
		{"space in host", []string{"bad host"}, pki.ErrInvalidHost},
		{"comma", []string{"a,b.example"}, pki.ErrInvalidHost},
		{"leading hyphen", []string{"-a.example"}, pki.ErrInvalidHost},
		{"empty label", []string{"a..example"}, pki.ErrInvalidHost},
		{"wildcard ok", []string{"*.example.com", "mqtt.example.com.", "fe80::1", "iotgw_broker"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "certs")
			err := pki.Init(dir, tc.hosts, now)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Init(%q) = %v, want %v", tc.hosts, err, tc.want)
			}
			if tc.want != nil {
				if _, err := os.Stat(pki.Paths(dir).CAKey); err == nil {
					t.Errorf("ca.key written despite the error")
				}
			}
		})
	}
}

func TestIssueErrors(t *testing.T) {
	dir := initDir(t)
	if err := pki.Issue(dir, "taken", now); err != nil {
		t.Fatal(err)
	}
	// A key left without its certificate (a crash between the two) also
	// blocks a re-issue.
	_, halfKey := pki.DeviceCert(dir, "half")
	if err := os.WriteFile(halfKey, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		dir  string
		id   string
		want error
	}{
		{"empty id", dir, "", pki.ErrInvalidDeviceID},
		{"slash", dir, "../ca", pki.ErrInvalidDeviceID},
		{"plus", dir, "a+b", pki.ErrInvalidDeviceID},
		{"space", dir, "a b", pki.ErrInvalidDeviceID},
		{"65 chars", dir, strings.Repeat("a", 65), pki.ErrInvalidDeviceID},
		{"gateway", dir, "gateway", pki.ErrReservedDeviceID},
		{"exists", dir, "taken", pki.ErrExists},
		{"key exists", dir, "half", pki.ErrExists},
		{"no CA", t.TempDir(), "d1", pki.ErrNoCA},
		{"64 chars", dir, strings.Repeat("a", 64), nil},
		{"ca", dir, "ca", nil},
		{"broker", dir, "broker", nil},
		{"dot dot", dir, "..", pki.ErrInvalidDeviceID},
		{"dot", dir, ".", pki.ErrInvalidDeviceID},
		{"leading dot", dir, ".hidden", pki.ErrInvalidDeviceID},
		{"inner dots", dir, "a..b.", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := pki.Issue(tc.dir, tc.id, now)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Issue(%q) = %v, want %v", tc.id, err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
	// The refused issue of an existing device left it untouched.
	crt, _ := pki.DeviceCert(dir, "taken")
	if c := readCert(t, crt); c.Subject.CommonName != "taken" {
		t.Errorf("CN = %q", c.Subject.CommonName)
	}
}

func TestIssueCARejected(t *testing.T) {
	dir := initDir(t)
	other := initDir(t)
	// A CA key that does not match the CA certificate is refused.
	b, err := os.ReadFile(pki.Paths(other).CAKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pki.Paths(dir).CAKey, b, 0o600); err != nil {
		t.Fatal(err)
	}
	err = pki.Issue(dir, "d1", now)
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("Issue with mismatched CA key = %v, want a mismatch error", err)
	}
}

func TestIssueNeverOutlivesCA(t *testing.T) {
	dir := initDir(t)
	late := now.Add(pki.CAValidity - 24*time.Hour)
	if err := pki.Issue(dir, "late", late); err != nil {
		t.Fatal(err)
	}
	crt, _ := pki.DeviceCert(dir, "late")
	ca := readCert(t, pki.Paths(dir).CACert)
	if c := readCert(t, crt); !c.NotAfter.Equal(ca.NotAfter) {
		t.Errorf("NotAfter = %v, want the CA's %v", c.NotAfter, ca.NotAfter)
	}
	if err := pki.Issue(dir, "expired", now.Add(pki.CAValidity+pki.Backdate+time.Hour)); err == nil {
		t.Errorf("Issue after the CA expired succeeded")
	}
}

func TestDeviceCertPaths(t *testing.T) {
	crt, key := pki.DeviceCert("certs", "gateway")
	if crt != filepath.Join("certs", "devices", "gateway.crt") || key != filepath.Join("certs", "devices", "gateway.key") {
		t.Errorf("DeviceCert = %q, %q", crt, key)
	}
}
