package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
)

// makeCSR returns a PEM CSR signed by key for tmpl.
func makeCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatalf("CreateCertificateRequest: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func ecKey(t *testing.T, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t *testing.T, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func cnOnly(cn string) *x509.CertificateRequest {
	return &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}
}

// TestSignCSRAccepts signs requests for each accepted key and checks the
// certificate is a device certificate for that key and nothing more.
func TestSignCSRAccepts(t *testing.T) {
	dir := initDir(t)
	ca := readCert(t, pki.Paths(dir).CACert)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	tests := []struct {
		name, id string
		key      crypto.Signer
		kind     string
	}{
		{"p256", "dev-p256", ecKey(t, elliptic.P256()), "ECDSA P-256"},
		{"p384", "dev-p384", ecKey(t, elliptic.P384()), "ECDSA P-384"},
		{"rsa2048", "dev-rsa", rsaKey(t, 2048), "RSA 2048"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pki.SignCSR(dir, tc.id, makeCSR(t, tc.key, cnOnly(tc.id)), pki.DefaultCSRDays, now)
			if err != nil {
				t.Fatalf("SignCSR: %v", err)
			}
			crt, key := pki.DeviceCert(dir, tc.id)
			if got.Path != crt || got.Key != tc.kind || got.DeviceID != tc.id {
				t.Errorf("Issued = %+v", got)
			}
			if _, err := os.Stat(key); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a private key was written (%s): the device keeps its own", key)
			}
			c := readCert(t, crt)
			if !c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.key.Public()) {
				t.Errorf("certificate is not for the CSR's key")
			}
			if c.Subject.CommonName != tc.id || c.IsCA {
				t.Errorf("CN %q IsCA %v", c.Subject.CommonName, c.IsCA)
			}
			if got, want := c.NotAfter, now.Add(pki.DefaultCSRDays*24*time.Hour); !got.Equal(want) {
				t.Errorf("NotAfter = %v, want %v", got, want)
			}
			fi, err := os.Stat(crt)
			if err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("certificate mode: %v %v", fi.Mode(), err)
			}
			opts := x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
			if _, err := c.Verify(opts); err != nil {
				t.Errorf("does not chain to the CA: %v", err)
			}
		})
	}
}

// TestSignCSRRefuses is the attack table: each request is refused with
// its sentinel and no certificate is written.
func TestSignCSRRefuses(t *testing.T) {
	dir := initDir(t)
	p256 := ecKey(t, elliptic.P256())
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good := makeCSR(t, p256, cnOnly("victim"))

	// A CSR whose signature was made by another key: the RSA signature's
	// last byte flipped still parses, but no longer verifies.
	rsaCSR := makeCSR(t, rsaKey(t, 2048), cnOnly("victim"))
	block, _ := pem.Decode(rsaCSR)
	block.Bytes[len(block.Bytes)-1] ^= 0x01
	badSig := pem.EncodeToMemory(block)

	twoCNs := &x509.CertificateRequest{Subject: pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "gateway"},
		{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "victim"},
	}}}

	tests := []struct {
		name, id string
		csr      []byte
		want     error
	}{
		{"another CN", "victim", makeCSR(t, p256, cnOnly("sensor-9")), pki.ErrCSRSubject},
		{"the gateway's CN", "victim", makeCSR(t, p256, cnOnly("gateway")), pki.ErrCSRSubject},
		{"no CN", "victim", makeCSR(t, p256, &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"x"}}}), pki.ErrCSRSubject},
		{"two CNs", "victim", makeCSR(t, p256, twoCNs), pki.ErrCSRSubject},
		{"the gateway id", "gateway", makeCSR(t, p256, cnOnly("gateway")), pki.ErrReservedDeviceID},
		{"bad id", "../x", makeCSR(t, p256, cnOnly("../x")), pki.ErrInvalidDeviceID},
		{"rsa 1024", "victim", makeCSR(t, rsaKey(t, 1024), cnOnly("victim")), pki.ErrWeakKey},
		{"p224", "victim", makeCSR(t, ecKey(t, elliptic.P224()), cnOnly("victim")), pki.ErrWeakKey},
		{"p521", "victim", makeCSR(t, ecKey(t, elliptic.P521()), cnOnly("victim")), pki.ErrWeakKey},
		{"ed25519", "victim", makeCSR(t, edKey, cnOnly("victim")), pki.ErrWeakKey},
		{"bad signature", "victim", badSig, pki.ErrCSRSignature},
		{"not PEM", "victim", []byte("hello"), pki.ErrBadCSR},
		{"a certificate", "victim", certPEMOf(t, dir), pki.ErrBadCSR},
		{"two blocks", "victim", append(append([]byte{}, good...), good...), pki.ErrBadCSR},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pki.SignCSR(dir, tc.id, tc.csr, pki.DefaultCSRDays, now)
			if !errors.Is(err, tc.want) {
				t.Fatalf("SignCSR = %v, want %v", err, tc.want)
			}
			if crt, _ := pki.DeviceCert(dir, "victim"); fileExists(crt) {
				os.Remove(crt) // so the next case is judged on its own
				t.Fatalf("%s written for a refused request", crt)
			}
		})
	}
	for _, days := range []int{0, -1, pki.MaxCSRDays + 1} {
		if _, err := pki.SignCSR(dir, "victim", good, days, now); !errors.Is(err, pki.ErrBadValidity) {
			t.Errorf("days %d: %v, want ErrBadValidity", days, err)
		}
	}
}

func certPEMOf(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(pki.Paths(dir).CACert)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// TestSignCSRNeutralizesExtensions asks for a CA certificate with SANs,
// extra key usages, extra subject fields and an unknown critical
// extension; the certificate carries none of it.
func TestSignCSRNeutralizesExtensions(t *testing.T) {
	dir := initDir(t)
	bc, err := asn1.Marshal(struct {
		IsCA       bool `asn1:"optional"`
		MaxPathLen int  `asn1:"optional,default:-1"`
	}{true, 5})
	if err != nil {
		t.Fatal(err)
	}
	ku, err := asn1.Marshal(asn1.BitString{Bytes: []byte{0x06}, BitLength: 7}) // keyCertSign, cRLSign
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://evil/ca")
	req := &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "sensor-1", Organization: []string{"evil"}, OrganizationalUnit: []string{"admins"}},
		DNSNames:       []string{"broker", "localhost"},
		IPAddresses:    []net.IP{net.IPv4(127, 0, 0, 1)},
		EmailAddresses: []string{"a@b.c"},
		URIs:           []*url.URL{u},
		ExtraExtensions: []pkix.Extension{
			{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc},
			{Id: asn1.ObjectIdentifier{2, 5, 29, 15}, Critical: true, Value: ku},
			{Id: asn1.ObjectIdentifier{1, 2, 3, 4, 5}, Critical: true, Value: []byte{0x05, 0x00}},
		},
	}
	if _, err := pki.SignCSR(dir, "sensor-1", makeCSR(t, ecKey(t, elliptic.P256()), req), 30, now); err != nil {
		t.Fatalf("SignCSR: %v", err)
	}
	crt, _ := pki.DeviceCert(dir, "sensor-1")
	c := readCert(t, crt)
	if c.IsCA || c.MaxPathLen > 0 {
		t.Errorf("IsCA %v MaxPathLen %d: the request's CA:true was copied", c.IsCA, c.MaxPathLen)
	}
	if len(c.DNSNames)+len(c.IPAddresses)+len(c.EmailAddresses)+len(c.URIs) != 0 {
		t.Errorf("SANs copied: %v %v %v %v", c.DNSNames, c.IPAddresses, c.EmailAddresses, c.URIs)
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v, want digitalSignature only", c.KeyUsage)
	}
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage = %v", c.ExtKeyUsage)
	}
	if !slices.Equal(c.Subject.Organization, []string{"iotgw"}) || len(c.Subject.OrganizationalUnit) != 0 {
		t.Errorf("subject = %v: request's subject fields copied", c.Subject)
	}
	if len(c.UnhandledCriticalExtensions) != 0 {
		t.Errorf("critical extensions copied: %v", c.UnhandledCriticalExtensions)
	}
	if got, want := c.NotAfter, now.Add(30*24*time.Hour); !got.Equal(want) {
		t.Errorf("NotAfter = %v, want %v (--days 30)", got, want)
	}
}

// TestSignCSRNeverOverwrites refuses a device that already has a
// certificate, from Issue or an earlier Sign, and caps the validity at
// the CA's expiry.
func TestSignCSRNeverOverwrites(t *testing.T) {
	dir := initDir(t)
	if err := pki.Issue(dir, "issued", now); err != nil {
		t.Fatal(err)
	}
	key := ecKey(t, elliptic.P256())
	if _, err := pki.SignCSR(dir, "issued", makeCSR(t, key, cnOnly("issued")), 30, now); !errors.Is(err, pki.ErrExists) {
		t.Errorf("over an issued device: %v, want ErrExists", err)
	}
	if _, err := pki.SignCSR(dir, "csr", makeCSR(t, key, cnOnly("csr")), 30, now); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.SignCSR(dir, "csr", makeCSR(t, key, cnOnly("csr")), 30, now); !errors.Is(err, pki.ErrExists) {
		t.Errorf("twice: %v, want ErrExists", err)
	}
	// Nine years on, a 3650-day certificate ends with the CA.
	late := now.Add(9 * 365 * 24 * time.Hour)
	got, err := pki.SignCSR(dir, "late", makeCSR(t, key, cnOnly("late")), pki.MaxCSRDays, late)
	if err != nil {
		t.Fatal(err)
	}
	if want := now.Add(pki.CAValidity); !got.NotAfter.Equal(want) {
		t.Errorf("NotAfter = %v, want the CA's %v", got.NotAfter, want)
	}
	if _, err := pki.SignCSR(t.TempDir(), "x", makeCSR(t, key, cnOnly("x")), 30, now); !errors.Is(err, pki.ErrNoCA) {
		t.Errorf("without a CA: %v, want ErrNoCA", err)
	}
}

// TestSignBatchAllOrNothing signs a batch, and refuses one with a bad
// request, an existing certificate or a repeated id without leaving any
// certificate behind.
func TestSignBatchAllOrNothing(t *testing.T) {
	dir := initDir(t)
	s, err := pki.OpenSigner(dir)
	if err != nil {
		t.Fatal(err)
	}
	key := ecKey(t, elliptic.P256())
	req := func(id, cn string) pki.CSRRequest {
		return pki.CSRRequest{DeviceID: id, CSR: makeCSR(t, key, cnOnly(cn))}
	}
	if err := pki.Issue(dir, "taken", now); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		reqs []pki.CSRRequest
		want error
	}{
		{"bad CN last", []pki.CSRRequest{req("b1", "b1"), req("b2", "b2"), req("b3", "other")}, pki.ErrCSRSubject},
		{"existing certificate", []pki.CSRRequest{req("b1", "b1"), req("taken", "taken")}, pki.ErrExists},
		{"repeated id", []pki.CSRRequest{req("b1", "b1"), req("b2", "b2"), req("b1", "b1")}, pki.ErrExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.SignBatch(tc.reqs, 30, now); !errors.Is(err, tc.want) {
				t.Fatalf("SignBatch = %v, want %v", err, tc.want)
			}
			for _, id := range []string{"b1", "b2", "b3"} {
				if crt, _ := pki.DeviceCert(dir, id); fileExists(crt) {
					t.Fatalf("%s left behind by a refused batch", crt)
				}
			}
		})
	}
	got, err := s.SignBatch([]pki.CSRRequest{req("b1", "b1"), req("b2", "b2")}, 30, now)
	if err != nil || len(got) != 2 {
		t.Fatalf("SignBatch = %v, %v", got, err)
	}
	for _, is := range got {
		if c := readCert(t, is.Path); c.Subject.CommonName != is.DeviceID || c.IsCA {
			t.Errorf("%s: CN %q", is.Path, c.Subject.CommonName)
		}
	}
}
