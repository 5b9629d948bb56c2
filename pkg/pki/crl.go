package pki

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// ErrAlreadyRevoked means the certificate is already on the CRL; Revoke
// wraps it and leaves the CRL as it was.
var ErrAlreadyRevoked = errors.New("already revoked")

// crlMode is the CRL's file mode: it is public, and Mosquitto reads it
// after dropping to the mosquitto user, like broker.crt.
const crlMode os.FileMode = certMode

// Revoked is one certificate that Revoke put on the CRL.
type Revoked struct {
	// DeviceID is the certificate's Common Name.
	DeviceID string
	// Serial is the certificate's serial number.
	Serial *big.Int
	// CRL is the file that now lists it.
	CRL string
}

// Revoke adds the certificate of deviceID (dir/devices/<id>.crt, issued by
// Issue) to dir/crl.pem, a CRL signed by the CA in dir, and rewrites the
// CRL atomically (0644, so Mosquitto can read it). The CRL's number grows
// by one. A missing crl.pem (a PKI made before CRLs) is created. now is the
// revocation time.
//
// The broker must then be restarted to refuse the certificate and drop
// its open connection (mosquitto#35; see mosquitto/README.md).
//
// Revoke fails with an error wrapping ErrInvalidDeviceID or
// ErrReservedDeviceID for such ids, fs.ErrNotExist when the device has no
// certificate in dir, ErrNoCA without a CA, and ErrAlreadyRevoked when
// the serial is already listed. Concurrent calls on one dir are serialised
// with a lock file.
func Revoke(dir, deviceID string, now time.Time) (Revoked, error) {
	// A leading dot would name a file outside devices/ ("..").
	if !envelope.ValidDeviceID(deviceID) || strings.HasPrefix(deviceID, ".") {
		return Revoked{}, fmt.Errorf("revoke %q: %w", deviceID, ErrInvalidDeviceID)
	}
	if deviceID == GatewayIdentity {
		return Revoked{}, fmt.Errorf("revoke %q: %w: it is the gateway's identity at the broker", deviceID, ErrReservedDeviceID)
	}
	ca, err := loadCA(dir)
	if err != nil {
		return Revoked{}, fmt.Errorf("revoke %q: %w", deviceID, err)
	}
	crtPath, _ := DeviceCert(dir, deviceID)
	b, err := os.ReadFile(crtPath) //nolint:gosec // G304: dir is the operator's PKI directory and deviceID was checked above (a valid id, no leading dot), so the path stays in dir/devices
	if err != nil {
		return Revoked{}, fmt.Errorf("revoke %q: read its certificate: %w", deviceID, err)
	}
	cert, err := parseCertPEM(b)
	if err != nil {
		return Revoked{}, fmt.Errorf("revoke %q: %s: %w", deviceID, crtPath, err)
	}
	if err := cert.CheckSignatureFrom(ca.cert); err != nil {
		return Revoked{}, fmt.Errorf("revoke %q: %s is not signed by this CA: %w", deviceID, crtPath, err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return Revoked{}, fmt.Errorf("revoke %q: %w", deviceID, err)
	}
	defer unlock()
	files := Paths(dir)
	entries, number := []x509.RevocationListEntry(nil), big.NewInt(1)
	list, err := ReadCRL(dir)
	switch {
	case err == nil:
		for _, e := range list.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
				return Revoked{}, fmt.Errorf("revoke %q: serial %x %w", deviceID, cert.SerialNumber, ErrAlreadyRevoked)
			}
		}
		entries = list.RevokedCertificateEntries
		number = new(big.Int).Add(list.Number, big.NewInt(1))
	case errors.Is(err, fs.ErrNotExist):
	default:
		return Revoked{}, fmt.Errorf("revoke %q: %w", deviceID, err)
	}
	entries = append(entries, x509.RevocationListEntry{SerialNumber: cert.SerialNumber, RevocationTime: now.UTC()})
	if err := writeCRL(ca, files.CRL, entries, number, now); err != nil {
		return Revoked{}, fmt.Errorf("revoke %q: %w", deviceID, err)
	}
	return Revoked{DeviceID: deviceID, Serial: cert.SerialNumber, CRL: files.CRL}, nil
}

// EnsureCRL writes an empty dir/crl.pem if there is none, for a PKI made
// before Init wrote one; an existing CRL is left alone. It reports whether
// it wrote the file.
func EnsureCRL(dir string, now time.Time) (bool, error) {
	ca, err := loadCA(dir)
	if err != nil {
		return false, fmt.Errorf("write CRL: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return false, fmt.Errorf("write CRL: %w", err)
	}
	defer unlock()
	if _, err := os.Lstat(Paths(dir).CRL); err == nil {
		return false, nil
	}
	if err := writeCRL(ca, Paths(dir).CRL, nil, big.NewInt(1), now); err != nil {
		return false, fmt.Errorf("write CRL: %w", err)
	}
	return true, nil
}

// ReadCRL reads dir/crl.pem and checks that the CA in dir signed it. A
// missing file wraps fs.ErrNotExist.
func ReadCRL(dir string) (*x509.RevocationList, error) {
	files := Paths(dir)
	b, err := os.ReadFile(files.CRL)
	if err != nil {
		return nil, fmt.Errorf("read CRL: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "X509 CRL" {
		return nil, fmt.Errorf("read CRL: %s: no X509 CRL PEM block", files.CRL)
	}
	list, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("read CRL: %s: %w", files.CRL, err)
	}
	crtPEM, err := os.ReadFile(files.CACert)
	if err != nil {
		return nil, fmt.Errorf("read CRL: %w", caError(err))
	}
	ca, err := parseCertPEM(crtPEM)
	if err != nil {
		return nil, fmt.Errorf("read CRL: %s: %w", files.CACert, err)
	}
	if err := list.CheckSignatureFrom(ca); err != nil {
		return nil, fmt.Errorf("read CRL: %s is not signed by the CA in %s: %w", files.CRL, dir, err)
	}
	return list, nil
}

// writeCRL signs a CRL listing entries and writes it to path atomically.
// It is valid from now (backdated, like the certificates) until the CA
// expires: OpenSSL, and so Mosquitto, refuses EVERY client once a CRL's
// nextUpdate has passed ("CRL has expired"), and nothing here re-signs
// the CRL periodically.
func writeCRL(ca *signed, path string, entries []x509.RevocationListEntry, number *big.Int, now time.Time) error {
	tmpl := &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now.Add(-Backdate),
		NextUpdate:                ca.cert.NotAfter,
		RevokedCertificateEntries: entries,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.cert, ca.key)
	if err != nil {
		return fmt.Errorf("sign CRL: %w", err)
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), crlMode, replace, false)
}

// lockDir takes an exclusive lock on dir/.crl.lock, so two revocations
// cannot both read the old CRL and one lose the other's entry.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".crl.lock"), os.O_CREATE|os.O_RDWR, 0o600) //nolint:gosec // G304: a fixed name in the operator's PKI directory
	if err != nil {
		return nil, fmt.Errorf("lock CRL: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock CRL: %w", err)
	}
	return func() { f.Close() }, nil
}
