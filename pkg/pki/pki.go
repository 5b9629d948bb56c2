package pki

import (
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// Validity periods of the certificates this package creates.
const (
	// CAValidity is how long the CA certificate is valid.
	CAValidity = 10 * 365 * 24 * time.Hour
	// LeafValidity is how long broker, gateway and device certificates are
	// valid. A leaf never outlives the CA that signs it.
	LeafValidity = 2 * 365 * 24 * time.Hour
	// Backdate is how far before now every certificate becomes valid, so a
	// peer whose clock runs a little slow still accepts it.
	Backdate = time.Hour
)

// GatewayIdentity is the Common Name of the gateway's client certificate,
// and so its MQTT username at the broker. It cannot be used as a device id.
const GatewayIdentity = "gateway"

// Sentinel errors; Init and Issue wrap them.
var (
	// ErrExists means a file that is never overwritten (ca.key, a device's
	// certificate or key) already exists.
	ErrExists = errors.New("already exists")
	// ErrNoCA means the directory holds no usable CA; run Init first.
	ErrNoCA = errors.New("no CA")
	// ErrInvalidDeviceID means a device id is not 1-64 characters of
	// [A-Za-z0-9_.-] or starts with a dot.
	ErrInvalidDeviceID = errors.New("device id must be 1-64 characters of [A-Za-z0-9_.-], not starting with a dot")
	// ErrReservedDeviceID means a device id would collide with another
	// identity at the broker (GatewayIdentity).
	ErrReservedDeviceID = errors.New("device id is reserved")
	// ErrInvalidHost means a broker host name is neither an IP address nor
	// a DNS name.
	ErrInvalidHost = errors.New("host must be an IP address or a DNS name")
)

// Files names the files Init writes in a PKI directory.
type Files struct {
	CACert, CAKey           string
	BrokerCert, BrokerKey   string
	GatewayCert, GatewayKey string
	// CRL is the certificate revocation list (crl.pem) that Mosquitto's
	// crlfile names; Init writes it empty and Revoke adds to it.
	CRL string
}

// All returns every file in the order Init writes them: ca.key first, as
// it is the claim on the directory.
func (f Files) All() []string {
	return []string{f.CAKey, f.CACert, f.BrokerKey, f.BrokerCert, f.GatewayKey, f.GatewayCert, f.CRL}
}

// Paths returns the names of the files Init writes in dir.
func Paths(dir string) Files {
	return Files{
		CACert:      filepath.Join(dir, "ca.crt"),
		CAKey:       filepath.Join(dir, "ca.key"),
		BrokerCert:  filepath.Join(dir, "broker.crt"),
		BrokerKey:   filepath.Join(dir, "broker.key"),
		GatewayCert: filepath.Join(dir, "gateway.crt"),
		GatewayKey:  filepath.Join(dir, "gateway.key"),
		CRL:         filepath.Join(dir, "crl.pem"),
	}
}

// DeviceCert returns the certificate and key file names Issue writes for
// deviceID in dir. It does not check deviceID.
func DeviceCert(dir, deviceID string) (crt, key string) {
	base := filepath.Join(dir, "devices", deviceID)
	return base + ".crt", base + ".key"
}

// Init creates a new PKI in dir: the CA, the broker's server certificate
// and the gateway's client certificate (see the package documentation for
// the layout). It creates dir (0755) if it is missing.
//
// The broker certificate names localhost, 127.0.0.1, ::1 and each of hosts,
// each an IP address or a DNS name. now is the issue time.
//
// Init refuses, with an error wrapping ErrExists, when dir/ca.key already
// exists, so an existing CA is never overwritten. It writes ca.key first,
// so if Init fails part way the directory must be removed before retrying.
func Init(dir string, hosts []string, now time.Time) error {
	files := Paths(dir)
	dnsNames, ips, err := brokerNames(hosts)
	if err != nil {
		return fmt.Errorf("init PKI: %w", err)
	}
	if _, err := os.Lstat(files.CAKey); err == nil {
		return fmt.Errorf("init PKI: %s %w; refusing to overwrite the CA", files.CAKey, ErrExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("init PKI: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // G301: certificates are public and Mosquitto (another user) must reach them; keys are 0600 files
		return fmt.Errorf("init PKI: %w", err)
	}

	ca, err := newCA(now)
	if err != nil {
		return fmt.Errorf("init PKI: %w", err)
	}
	broker, err := ca.sign(leafTemplate("broker", x509.ExtKeyUsageServerAuth, now), func(t *x509.Certificate) {
		t.DNSNames, t.IPAddresses = dnsNames, ips
	})
	if err != nil {
		return fmt.Errorf("init PKI: sign broker certificate: %w", err)
	}
	gateway, err := ca.sign(leafTemplate(GatewayIdentity, x509.ExtKeyUsageClientAuth, now), nil)
	if err != nil {
		return fmt.Errorf("init PKI: sign gateway certificate: %w", err)
	}

	caKey, err := keyPEM(ca.key)
	if err != nil {
		return fmt.Errorf("init PKI: %w", err)
	}
	// ca.key is linked into place, which fails if it exists: that is the
	// claim on dir, so a concurrent Init cannot mix its files with ours.
	if err := writeFile(files.CAKey, caKey, keyMode, createNew, false); err != nil {
		if errors.Is(err, ErrExists) {
			return fmt.Errorf("init PKI: %w; refusing to overwrite the CA", err)
		}
		return fmt.Errorf("init PKI: %w", err)
	}
	if err := writeFile(files.CACert, certPEM(ca.cert.Raw), certMode, replace, false); err != nil {
		return fmt.Errorf("init PKI: %w", err)
	}
	if err := writeLeaf(broker, files.BrokerCert, files.BrokerKey, brokerKeyMode, true, replace); err != nil {
		return fmt.Errorf("init PKI: %w", err)
	}
	if err := writeLeaf(gateway, files.GatewayCert, files.GatewayKey, keyMode, false, replace); err != nil {
		return fmt.Errorf("init PKI: %w", err)
	}
	// Mosquitto refuses to start if the crlfile it names is missing, so
	// the CRL exists from the start, empty.
	if err := writeCRL(ca, files.CRL, nil, big.NewInt(1), now); err != nil {
		return fmt.Errorf("init PKI: %w", err)
	}
	return nil
}

// Issue writes a client certificate and key for deviceID into dir/devices,
// signed by the CA in dir; the certificate's Common Name is deviceID, which
// the broker uses as the device's MQTT username. now is the issue time.
//
// Issue fails with an error wrapping ErrNoCA if dir holds no CA,
// ErrInvalidDeviceID if deviceID is not 1-64 characters of [A-Za-z0-9_.-]
// or starts with a dot (".." would write outside dir/devices),
// ErrReservedDeviceID if deviceID is GatewayIdentity (a device with that
// CN would get the gateway's rights at the broker), and ErrExists if the
// device's certificate or key already exists.
func Issue(dir, deviceID string, now time.Time) error {
	if !envelope.ValidDeviceID(deviceID) {
		return fmt.Errorf("issue device certificate %q: %w", deviceID, ErrInvalidDeviceID)
	}
	if deviceID == GatewayIdentity {
		return fmt.Errorf("issue device certificate %q: %w: it is the gateway's identity at the broker", deviceID, ErrReservedDeviceID)
	}
	crtPath, keyPath := DeviceCert(dir, deviceID)
	for _, p := range []string{crtPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("issue device certificate %q: %s %w", deviceID, p, ErrExists)
		}
	}
	ca, err := loadCA(dir)
	if err != nil {
		return fmt.Errorf("issue device certificate %q: %w", deviceID, err)
	}
	if err := os.MkdirAll(filepath.Dir(crtPath), 0o755); err != nil { //nolint:gosec // G301: as in Init: public certificates, 0600 keys
		return fmt.Errorf("issue device certificate %q: %w", deviceID, err)
	}
	leaf, err := ca.sign(leafTemplate(deviceID, x509.ExtKeyUsageClientAuth, now), nil)
	if err != nil {
		return fmt.Errorf("issue device certificate %q: %w", deviceID, err)
	}
	if err := writeLeaf(leaf, crtPath, keyPath, keyMode, false, createNew); err != nil {
		return fmt.Errorf("issue device certificate %q: %w", deviceID, err)
	}
	return nil
}

// writeLeaf writes a signed leaf's key with keyMode, then its certificate,
// both placed with how. group gives the key to the mosquitto group.
func writeLeaf(l *signed, crtPath, keyPath string, keyMode os.FileMode, group bool, how placement) error {
	k, err := keyPEM(l.key)
	if err != nil {
		return err
	}
	if err := writeFile(keyPath, k, keyMode, how, group); err != nil {
		return err
	}
	return writeFile(crtPath, certPEM(l.cert.Raw), certMode, how, false)
}

// brokerNames returns the broker certificate's DNS names and IP addresses:
// localhost, 127.0.0.1 and ::1, then hosts, without duplicates.
func brokerNames(hosts []string) ([]string, []net.IP, error) {
	dnsNames := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1).To4(), net.IPv6loopback}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			if !containsIP(ips, ip) {
				ips = append(ips, ip)
			}
			continue
		}
		name := strings.ToLower(strings.TrimSuffix(h, "."))
		if !validDNSName(name) {
			return nil, nil, fmt.Errorf("broker host %q: %w", h, ErrInvalidHost)
		}
		if !contains(dnsNames, name) {
			dnsNames = append(dnsNames, name)
		}
	}
	return dnsNames, ips, nil
}

// validDNSName reports whether name is a DNS name that may go in a
// certificate: dot-separated labels of letters, digits, underscores (as in
// container names) and inner hyphens, optionally after a "*." wildcard.
func validDNSName(name string) bool {
	name = strings.TrimPrefix(name, "*.")
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func containsIP(list []net.IP, ip net.IP) bool {
	for _, v := range list {
		if v.Equal(ip) {
			return true
		}
	}
	return false
}

// leafTemplate returns the template of an end-entity certificate for cn
// with one extended key usage, valid from now (backdated) for LeafValidity.
func leafTemplate(cn string, usage x509.ExtKeyUsage, now time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"iotgw"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(LeafValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
	}
}

// signed is a certificate with its private key.
type signed struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}
