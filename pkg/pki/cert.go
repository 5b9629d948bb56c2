package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"time"
)

// newCA creates a self-signed CA valid from now (backdated) for CAValidity.
// It may sign leaves but no further CAs.
func newCA(now time.Time) (*signed, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "iotgw CA", Organization: []string{"iotgw"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &signed{cert: cert, key: key}, nil
}

// sign creates a fresh key and a certificate for it from tmpl, signed by
// ca (see signPublic).
func (ca *signed) sign(tmpl *x509.Certificate, edit func(*x509.Certificate)) (*signed, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	cert, err := ca.signPublic(tmpl, &key.PublicKey, edit)
	if err != nil {
		return nil, err
	}
	return &signed{cert: cert, key: key}, nil
}

// signPublic creates a certificate for pub from tmpl, signed by ca, with a
// fresh serial. edit, if not nil, adjusts the template first. The
// certificate never outlives the CA.
func (ca *signed) signPublic(tmpl *x509.Certificate, pub any, edit func(*x509.Certificate)) (*x509.Certificate, error) {
	var err error
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, err
	}
	if edit != nil {
		edit(tmpl)
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	if !tmpl.NotBefore.Before(tmpl.NotAfter) {
		return nil, fmt.Errorf("sign certificate %q: the CA expired at %s", tmpl.Subject.CommonName, ca.cert.NotAfter.Format(time.RFC3339))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	return cert, nil
}

// loadCA reads the CA certificate and key from dir and checks that they
// belong together. A missing file is reported as ErrNoCA.
func loadCA(dir string) (*signed, error) {
	files := Paths(dir)
	crtPEM, err := os.ReadFile(files.CACert)
	if err != nil {
		return nil, caError(err)
	}
	keyPEMBytes, err := os.ReadFile(files.CAKey)
	if err != nil {
		return nil, caError(err)
	}
	cert, err := parseCertPEM(crtPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %s: %w", files.CACert, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA: %s is not a CA certificate", files.CACert)
	}
	key, err := parseKeyPEM(keyPEMBytes)
	if err != nil {
		return nil, fmt.Errorf("load CA: %s: %w", files.CAKey, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load CA: %s does not match %s", files.CAKey, files.CACert)
	}
	return &signed{cert: cert, key: key}, nil
}

// caError explains a failure to read a CA file; a missing file wraps
// ErrNoCA.
func caError(err error) error {
	var pe *fs.PathError
	if errors.Is(err, fs.ErrNotExist) && errors.As(err, &pe) {
		return fmt.Errorf("load CA: %w: %s not found (run \"iotgw pki init\" first)", ErrNoCA, pe.Path)
	}
	return fmt.Errorf("load CA: %w", err)
}

func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// keyPEM encodes key as a PKCS#8 "PRIVATE KEY" PEM block.
func keyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}

func parseKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PRIVATE KEY PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key is %T, want ECDSA", k)
	}
	return ec, nil
}
