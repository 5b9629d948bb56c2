package forward

import (
	"bytes"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/iotgw/iotgw/pkg/backendsig"
	"github.com/iotgw/iotgw/pkg/internal/netx"
	"github.com/iotgw/iotgw/pkg/internal/secretfile"
)

// How the gateway proves itself to the backend (docs/PROTOCOL.md 4b): a
// bearer token, a TLS client certificate, and an HMAC signature over each
// request (its bytes and HMAC are package backendsig's). Each is optional; each secret lives in its own file, read with
// secretfile (refused when other users can read it), and never appears in
// a log line, an error or a metric.

// minSigningKey is the shortest signing key accepted, in bytes.
const minSigningKey = 32

// Errors of the trust settings.
var (
	// ErrEmptySecret: a token or key file holds nothing (after one newline).
	ErrEmptySecret = errors.New("is empty")
	// ErrMultiLineSecret: a token or key file holds more than one line.
	ErrMultiLineSecret = errors.New("holds more than one line")
)

// readLine reads a one-line secret file: one trailing "\n" (or "\r\n") is
// dropped; an empty or multi-line file is refused. Errors name the file,
// never its contents.
func readLine(path string) ([]byte, error) {
	b, err := secretfile.Read(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("%s: %w", path, ErrEmptySecret)
	case bytes.ContainsAny(b, "\r\n"):
		return nil, fmt.Errorf("%s: %w", path, ErrMultiLineSecret)
	}
	return b, nil
}

// ReadBearerToken reads a bearer token file: one line of printable ASCII
// without spaces (one trailing newline is dropped), from a file only its
// owner can read.
func ReadBearerToken(path string) (string, error) {
	b, err := readLine(path)
	if err != nil {
		return "", err
	}
	for _, c := range b {
		if c < 0x21 || c > 0x7e {
			return "", fmt.Errorf("%s: the token must be printable ASCII without spaces (just the token, no \"Bearer \")", path)
		}
	}
	return string(b), nil
}

// ReadSigningKey reads a signing key file: one line of at least 32 bytes
// (e.g. `openssl rand -hex 32`; one trailing newline is dropped), whose
// bytes are the HMAC key, from a file only its owner can read.
func ReadSigningKey(path string) ([]byte, error) {
	b, err := readLine(path)
	if err != nil {
		return nil, err
	}
	if len(b) < minSigningKey {
		return nil, fmt.Errorf("%s: a signing key must be at least %d bytes, got %d (make one with: openssl rand -hex 32)", path, minSigningKey, len(b))
	}
	return b, nil
}

// credentials are the loaded trust settings.
type credentials struct {
	authorization string      // "Bearer <token>", or ""
	signingKey    []byte      // nil: no signature
	tls           *tls.Config // always set: TLS 1.2 at least
}

// usesTLSFiles reports whether any TLS file is set.
func (c Config) usesTLSFiles() bool { return c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" }

// loadCredentials checks the trust settings and reads their files.
func (c Config) loadCredentials() (credentials, error) {
	var cr credentials
	if err := backendsig.CheckScheme("backend.signature_scheme", c.SignatureScheme); err != nil {
		return cr, err
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return cr, errors.New("backend.cert_file and backend.key_file: set both (a client certificate and its key) or neither")
	}
	if c.usesTLSFiles() {
		for _, e := range []struct{ key, url string }{{"backend.url", c.URL}, {"backend.batch_url", c.BatchURL}} {
			if e.url == "" || (e.key == "backend.batch_url" && c.BatchMax <= 1) {
				continue
			}
			if !strings.HasPrefix(strings.ToLower(e.url), "https://") {
				return cr, fmt.Errorf("%s: backend.ca_file, cert_file and key_file need an https:// %s", e.key, e.key)
			}
		}
	}
	cr.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile) // #nosec G304 -- the operator names the file
		if err != nil {
			return cr, fmt.Errorf("backend.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return cr, fmt.Errorf("backend.ca_file: %s holds no PEM certificate", c.CAFile)
		}
		cr.tls.RootCAs = pool // only this CA: the system's roots are not trusted for the backend
	}
	if c.CertFile != "" {
		certPEM, err := os.ReadFile(c.CertFile) // #nosec G304 -- the operator names the file
		if err != nil {
			return cr, fmt.Errorf("backend.cert_file: %w", err)
		}
		keyPEM, err := secretfile.Read(c.KeyFile)
		if err != nil {
			return cr, fmt.Errorf("backend.key_file: %w", err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			// tls's errors name PEM block types, never key bytes.
			return cr, fmt.Errorf("backend.cert_file/key_file: %s and %s: %w", c.CertFile, c.KeyFile, err)
		}
		cr.tls.Certificates = []tls.Certificate{pair}
	}
	var token string
	if c.BearerTokenFile != "" {
		var err error
		if token, err = ReadBearerToken(c.BearerTokenFile); err != nil {
			return cr, fmt.Errorf("backend.bearer_token_file: %w", err)
		}
		cr.authorization = "Bearer " + token
	}
	if c.SigningKeyFile != "" {
		key, err := ReadSigningKey(c.SigningKeyFile)
		if err != nil {
			return cr, fmt.Errorf("backend.signing_key_file: %w", err)
		}
		if token != "" && subtle.ConstantTimeCompare(key, []byte(token)) == 1 {
			return cr, errors.New("backend.signing_key_file: holds the same secret as backend.bearer_token_file; use a separate key (one key per purpose)")
		}
		cr.signingKey = key
	}
	return cr, nil
}

// PlaintextWarning returns one line for the operator when backend.url (or
// backend.batch_url in batch mode) is plain http:// to a host that is not
// loopback (127.0.0.0/8, ::1, localhost) or backend.private_network_host,
// and "" otherwise. It names the host only, never credentials in the URL.
func (c Config) PlaintextWarning() string {
	var bad []string
	for _, e := range []struct{ key, url string }{{"backend.url", c.URL}, {"backend.batch_url", c.BatchURL}} {
		if e.url == "" || (e.key == "backend.batch_url" && c.BatchMax <= 1) {
			continue
		}
		u, err := url.Parse(strings.ReplaceAll(e.url, "{device_id}", "x"))
		if err != nil || !strings.EqualFold(u.Scheme, "http") || netx.IsLoopbackHost(u.Hostname()) ||
			(c.PrivateNetworkHost != "" && strings.EqualFold(u.Hostname(), c.PrivateNetworkHost)) {
			continue
		}
		bad = append(bad, fmt.Sprintf("%s host %q", e.key, u.Hostname()))
	}
	if len(bad) == 0 {
		return ""
	}
	return "backend over plain http:// to a non-loopback host (" + strings.Join(bad, ", ") +
		"): payloads, device headers and any bearer token cross the network unencrypted and can be read or changed; use https://"
}

// SchemeWarning returns one line for the operator when requests are
// signed under scheme v1, and "" otherwise.
func (c Config) SchemeWarning() string {
	if c.SigningKeyFile == "" || c.SignatureScheme != backendsig.SchemeV1 {
		return ""
	}
	return "backend.signature_scheme v1: X-Device-Timestamp and X-Iotgw-Seq are not signed, so someone on the backend's network can change them; move the backend's verifier to v2 (docs/PROTOCOL.md 4b) and drop this setting"
}
