package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// DefaultCSRDays is how many days a certificate signed from a CSR is valid
// when the caller does not say (730 days, LeafValidity).
const DefaultCSRDays = 730

// MaxCSRDays is the longest validity SignCSR grants (10 years); the CA's
// own expiry shortens it further.
const MaxCSRDays = 3650

// MaxCSRSize is the largest CSR file, in bytes, that ParseCSR reads.
const MaxCSRSize = 64 << 10

// Errors about certificate signing requests; CheckCSR and Signer.Sign wrap
// them.
var (
	// ErrBadCSR means the input is not exactly one PEM "CERTIFICATE
	// REQUEST" that parses.
	ErrBadCSR = errors.New("not a PEM certificate signing request")
	// ErrCSRSignature means the CSR's self-signature does not verify: whoever
	// made it does not hold the key it names.
	ErrCSRSignature = errors.New("CSR signature does not verify")
	// ErrCSRSubject means the CSR asks for a Common Name other than the
	// device id (or for several).
	ErrCSRSubject = errors.New("CSR Common Name must be exactly the device id")
	// ErrWeakKey means the CSR's key is not ECDSA P-256 or P-384, or RSA of
	// at least 2048 bits.
	ErrWeakKey = errors.New("key must be ECDSA P-256 or P-384, or RSA of at least 2048 bits")
	// ErrBadValidity means the validity asked for is not 1 to MaxCSRDays days.
	ErrBadValidity = errors.New("validity must be 1 to 3650 days")
)

// oidCommonName is the X.520 commonName attribute type.
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// ParseCSR decodes b, which must be exactly one PEM block of type
// "CERTIFICATE REQUEST" (or the older "NEW CERTIFICATE REQUEST") and
// nothing else but whitespace, into a certificate request. It does not
// check the request; see CheckCSR.
func ParseCSR(b []byte) (*x509.CertificateRequest, error) {
	if len(b) > MaxCSRSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadCSR, MaxCSRSize)
	}
	block, rest := pem.Decode(b)
	if block == nil || (block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST") {
		return nil, fmt.Errorf("%w: no CERTIFICATE REQUEST PEM block", ErrBadCSR)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the CERTIFICATE REQUEST block", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	return csr, nil
}

// CheckCSR parses csrPEM (ParseCSR) and checks it for deviceID: the id is
// a valid device id and not GatewayIdentity, the request's signature
// verifies with the key it carries, its subject holds exactly one Common
// Name and it is deviceID, and its key is ECDSA P-256 or P-384 or RSA of
// at least 2048 bits. It returns the request and a short description of
// its key ("ECDSA P-256", "RSA 3072").
//
// The rest of the request (other subject fields, SANs, basic constraints,
// key usages, any extension) is not checked because it is never used:
// Signer.Sign copies only the public key.
func CheckCSR(csrPEM []byte, deviceID string) (*x509.CertificateRequest, string, error) {
	if !envelope.ValidDeviceID(deviceID) {
		return nil, "", ErrInvalidDeviceID
	}
	if deviceID == GatewayIdentity {
		return nil, "", fmt.Errorf("%w: it is the gateway's identity at the broker", ErrReservedDeviceID)
	}
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, "", err
	}
	// The key is checked before the signature: a weak key's signature proves
	// nothing worth knowing.
	kind, err := keyKind(csr.PublicKey)
	if err != nil {
		return nil, "", err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrCSRSignature, err)
	}
	var cns []string
	for _, a := range csr.Subject.Names {
		if a.Type.Equal(oidCommonName) {
			s, _ := a.Value.(string)
			cns = append(cns, s)
		}
	}
	if len(cns) != 1 || cns[0] != deviceID {
		return nil, "", fmt.Errorf("%w: it asks for CN %q, the device id is %q", ErrCSRSubject, csr.Subject.CommonName, deviceID)
	}
	return csr, kind, nil
}

// keyKind accepts ECDSA P-256 and P-384 and RSA keys of at least 2048 bits
// and describes them; anything else is ErrWeakKey.
func keyKind(pub any) (string, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ECDSA P-256", nil
		case elliptic.P384():
			return "ECDSA P-384", nil
		}
		return "", fmt.Errorf("%w: ECDSA on %s", ErrWeakKey, k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("%w: RSA %d", ErrWeakKey, k.N.BitLen())
		}
		return fmt.Sprintf("RSA %d", k.N.BitLen()), nil
	}
	return "", fmt.Errorf("%w: %T", ErrWeakKey, pub)
}

// Issued describes a certificate Signer.Sign wrote.
type Issued struct {
	// DeviceID is the certificate's Common Name.
	DeviceID string
	// Path is the certificate file, dir/devices/<id>.crt.
	Path string
	// Serial is the certificate's serial number, in hex.
	Serial string
	// NotAfter is when the certificate expires.
	NotAfter time.Time
	// Key describes the device's key ("ECDSA P-256", "RSA 2048").
	Key string
}

// Signer issues device certificates from CSRs with the CA of one PKI
// directory. It loads the CA once, so an import signs many requests
// without rereading ca.key.
type Signer struct {
	dir string
	ca  *signed
}

// OpenSigner loads the CA in dir. It fails with an error wrapping ErrNoCA
// if dir holds no CA.
func OpenSigner(dir string) (*Signer, error) {
	ca, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	return &Signer{dir: dir, ca: ca}, nil
}

// Sign checks csrPEM for deviceID (CheckCSR) and writes
// dir/devices/<deviceID>.crt: a client certificate for the request's key
// whose subject is CN=deviceID, O=iotgw, valid from now (backdated by
// Backdate) for days days (1 to MaxCSRDays, and never past the CA's own
// expiry). The certificate carries exactly what Issue's do: key usage
// digitalSignature, extended key usage clientAuth, CA:false. Nothing the
// request asks for besides its key is copied: not its other subject
// fields, SANs, basic constraints, key usages or any other extension.
//
// No private key is written: the device keeps it. Sign refuses, with an
// error wrapping ErrExists, when the device already has a certificate or
// key in dir, and never overwrites one.
func (s *Signer) Sign(deviceID string, csrPEM []byte, days int, now time.Time) (Issued, error) {
	if days < 1 || days > MaxCSRDays {
		return Issued{}, fmt.Errorf("sign CSR for %q: %w (got %d)", deviceID, ErrBadValidity, days)
	}
	csr, kind, err := CheckCSR(csrPEM, deviceID)
	if err != nil {
		return Issued{}, fmt.Errorf("sign CSR for %q: %w", deviceID, err)
	}
	crtPath, keyPath := DeviceCert(s.dir, deviceID)
	for _, p := range []string{crtPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return Issued{}, fmt.Errorf("sign CSR for %q: %s %w", deviceID, p, ErrExists)
		}
	}
	if err := os.MkdirAll(filepath.Dir(crtPath), 0o755); err != nil { //nolint:gosec // G301: as in Init: public certificates
		return Issued{}, fmt.Errorf("sign CSR for %q: %w", deviceID, err)
	}
	cert, err := s.ca.signPublic(deviceTemplate(deviceID, days, now), csr.PublicKey, nil)
	if err != nil {
		return Issued{}, fmt.Errorf("sign CSR for %q: %w", deviceID, err)
	}
	if err := writeFile(crtPath, certPEM(cert.Raw), certMode, createNew, false); err != nil {
		return Issued{}, fmt.Errorf("sign CSR for %q: %w", deviceID, err)
	}
	return Issued{DeviceID: deviceID, Path: crtPath, Serial: fmt.Sprintf("%x", cert.SerialNumber), NotAfter: cert.NotAfter, Key: kind}, nil
}

// SignCSR is OpenSigner(dir) followed by Sign, for one request.
func SignCSR(dir, deviceID string, csrPEM []byte, days int, now time.Time) (Issued, error) {
	s, err := OpenSigner(dir)
	if err != nil {
		return Issued{}, fmt.Errorf("sign CSR for %q: %w", deviceID, err)
	}
	return s.Sign(deviceID, csrPEM, days, now)
}

// ReadCSR reads a CSR file of at most MaxCSRSize bytes.
func ReadCSR(path string) ([]byte, error) {
	f, err := os.Open(path) //nolint:gosec // G304: the operator names the CSR file
	if err != nil {
		return nil, fmt.Errorf("read CSR: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxCSRSize+1))
	if err != nil {
		return nil, fmt.Errorf("read CSR %s: %w", path, err)
	}
	if len(b) > MaxCSRSize {
		return nil, fmt.Errorf("read CSR %s: %w: larger than %d bytes", path, ErrBadCSR, MaxCSRSize)
	}
	return b, nil
}

// CSRRequest is one device's certificate signing request, for SignBatch.
type CSRRequest struct {
	// DeviceID is the device id the certificate is for.
	DeviceID string
	// CSR is its PEM certificate signing request.
	CSR []byte
}

// SignBatch signs every request as Sign does, for an import: every request
// is checked (CheckCSR, and no certificate or key for the device yet)
// before any is signed, and the certificates are made durable together at
// the end rather than one at a time. Either every certificate is written
// or, on any error, none is: those already written are removed.
func (s *Signer) SignBatch(reqs []CSRRequest, days int, now time.Time) ([]Issued, error) {
	if days < 1 || days > MaxCSRDays {
		return nil, fmt.Errorf("sign CSRs: %w (got %d)", ErrBadValidity, days)
	}
	pubs := make([]any, len(reqs))
	kinds := make([]string, len(reqs))
	for i, r := range reqs {
		csr, kind, err := CheckCSR(r.CSR, r.DeviceID)
		if err != nil {
			return nil, fmt.Errorf("sign CSR for %q: %w", r.DeviceID, err)
		}
		crtPath, keyPath := DeviceCert(s.dir, r.DeviceID)
		for _, p := range []string{crtPath, keyPath} {
			if _, err := os.Lstat(p); err == nil {
				return nil, fmt.Errorf("sign CSR for %q: %s %w", r.DeviceID, p, ErrExists)
			}
		}
		pubs[i], kinds[i] = csr.PublicKey, kind
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	devDir := filepath.Join(s.dir, "devices")
	if err := os.MkdirAll(devDir, 0o755); err != nil { //nolint:gosec // G301: as in Init: public certificates
		return nil, fmt.Errorf("sign CSRs: %w", err)
	}
	out := make([]Issued, 0, len(reqs))
	var written []string
	undo := func(err error) ([]Issued, error) {
		for _, p := range written {
			_ = os.Remove(p)
		}
		return nil, err
	}
	for i, r := range reqs {
		cert, err := s.ca.signPublic(deviceTemplate(r.DeviceID, days, now), pubs[i], nil)
		if err != nil {
			return undo(fmt.Errorf("sign CSR for %q: %w", r.DeviceID, err))
		}
		crtPath, _ := DeviceCert(s.dir, r.DeviceID)
		if err := writeFileSync(crtPath, certPEM(cert.Raw), certMode, createNew, false, false); err != nil {
			return undo(fmt.Errorf("sign CSR for %q: %w", r.DeviceID, err))
		}
		written = append(written, crtPath)
		out = append(out, Issued{DeviceID: r.DeviceID, Path: crtPath, Serial: fmt.Sprintf("%x", cert.SerialNumber), NotAfter: cert.NotAfter, Key: kinds[i]})
	}
	if err := syncFiles(written); err != nil {
		return undo(fmt.Errorf("sign CSRs: %w", err))
	}
	if err := syncDir(devDir); err != nil {
		return undo(fmt.Errorf("sign CSRs: %w", err))
	}
	return out, nil
}

// deviceTemplate is the template of a device certificate signed from a
// CSR: CN=id, O=iotgw, digitalSignature, clientAuth, CA:false.
func deviceTemplate(deviceID string, days int, now time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: deviceID, Organization: []string{"iotgw"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(time.Duration(days) * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}
