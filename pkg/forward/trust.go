package forward

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/secretfile"
)

// How the gateway proves itself to the backend (docs/PROTOCOL.md 4b): a
// bearer token, a TLS client certificate, and an HMAC signature over each
// request. Each is optional; each secret lives in its own file, read with
// secretfile (refused when other users can read it), and never appears in
// a log line, an error or a metric.

// Signature headers (scheme v1, docs/PROTOCOL.md 4b).
const (
	// SignatureHeader carries "v1=" and 64 lowercase hex digits.
	SignatureHeader = "X-Iotgw-Signature"
	// TimestampHeader carries the signing time, decimal Unix seconds.
	TimestampHeader = "X-Iotgw-Timestamp"
	// signatureLabel starts the signing bytes: it names the scheme and its
	// version, so these bytes can never be taken for another message
	// signed with the same key.
	signatureLabel  = "iotgw-backend-v1\n"
	signaturePrefix = "v1="
	// minSigningKey is the shortest signing key accepted, in bytes.
	minSigningKey = 32
)

// Errors of the trust settings and of VerifyRequest.
var (
	// ErrEmptySecret: a token or key file holds nothing (after one newline).
	ErrEmptySecret = errors.New("is empty")
	// ErrMultiLineSecret: a token or key file holds more than one line.
	ErrMultiLineSecret = errors.New("holds more than one line")
	// ErrSignatureMissing: the request has no signature or no timestamp header.
	ErrSignatureMissing = errors.New("no X-Iotgw-Signature or X-Iotgw-Timestamp header")
	// ErrSignatureInvalid: a malformed header, or a signature that does not match.
	ErrSignatureInvalid = errors.New("bad signature")
	// ErrSignatureStale: a valid signature whose timestamp is outside the window.
	ErrSignatureStale = errors.New("stale signature timestamp")
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
// loopback (127.0.0.0/8, ::1, localhost), and "" otherwise. It names the
// host only, never credentials in the URL.
func (c Config) PlaintextWarning() string {
	var bad []string
	for _, e := range []struct{ key, url string }{{"backend.url", c.URL}, {"backend.batch_url", c.BatchURL}} {
		if e.url == "" || (e.key == "backend.batch_url" && c.BatchMax <= 1) {
			continue
		}
		u, err := url.Parse(strings.ReplaceAll(e.url, "{device_id}", "x"))
		if err != nil || !strings.EqualFold(u.Scheme, "http") || isLoopback(u.Hostname()) {
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

// isLoopback reports whether host is localhost, 127.0.0.0/8 or ::1.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// SigningBytes returns what a v1 signature covers: the label
// "iotgw-backend-v1", then method, request target (path and query, as
// sent), X-Device-Id, Idempotency-Key and the decimal timestamp, each
// followed by "\n", then the body's exact bytes. None of the five fields
// can hold a "\n" (VerifyRequest refuses one), and the body is last, so
// two different requests never have the same signing bytes.
func SigningBytes(method, target, deviceID, idempotencyKey string, ts int64, body []byte) []byte {
	b := make([]byte, 0, len(signatureLabel)+len(method)+len(target)+len(deviceID)+len(idempotencyKey)+25+len(body))
	b = append(b, signatureLabel...)
	for _, f := range []string{method, target, deviceID, idempotencyKey} {
		b = append(append(b, f...), '\n')
	}
	b = append(strconv.AppendInt(b, ts, 10), '\n')
	return append(b, body...)
}

// Sign returns the X-Iotgw-Signature value for a request: "v1=" and the
// lowercase hex of HMAC-SHA256(key, SigningBytes(...)).
func Sign(key []byte, method, target, deviceID, idempotencyKey string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(SigningBytes(method, target, deviceID, idempotencyKey, ts, body))
	return signaturePrefix + hex.EncodeToString(m.Sum(nil))
}

// VerifyRequest checks r's v1 signature over body (the request body's
// exact bytes, read by the caller) with key, in constant time, and that
// its timestamp is within maxSkew of now. It returns nil,
// ErrSignatureMissing, ErrSignatureInvalid (malformed or repeated
// headers, an X-Message-Id other than the signed Idempotency-Key, or no
// match) or ErrSignatureStale (a valid signature, but too
// old or too far ahead: a replay or a clock off).
func VerifyRequest(key []byte, r *http.Request, body []byte, now time.Time, maxSkew time.Duration) error {
	one := func(name string) (string, bool) {
		v := r.Header.Values(name)
		if len(v) > 1 || len(v) == 1 && strings.ContainsAny(v[0], "\r\n") {
			return "", false
		}
		if len(v) == 0 {
			return "", true
		}
		return v[0], true
	}
	sig, ok1 := one(SignatureHeader)
	tsRaw, ok2 := one(TimestampHeader)
	dev, ok3 := one("X-Device-Id")
	idem, ok4 := one("Idempotency-Key")
	msgID, ok5 := one("X-Message-Id")
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
		return fmt.Errorf("%w: a signed header is repeated or holds a line break", ErrSignatureInvalid)
	}
	// X-Message-Id is not signed on its own: the gateway sends it equal to
	// the signed Idempotency-Key, so any other value was changed on the way.
	if msgID != "" && msgID != idem {
		return fmt.Errorf("%w: X-Message-Id differs from the signed Idempotency-Key", ErrSignatureInvalid)
	}
	if sig == "" || tsRaw == "" {
		return ErrSignatureMissing
	}
	ts, err := strconv.ParseInt(tsRaw, 10, 64)
	if err != nil || ts < 0 || strconv.FormatInt(ts, 10) != tsRaw {
		return fmt.Errorf("%w: %s is not decimal Unix seconds", ErrSignatureInvalid, TimestampHeader)
	}
	hexSig, ok := strings.CutPrefix(sig, signaturePrefix)
	got, err := hex.DecodeString(hexSig)
	if !ok || err != nil || len(got) != sha256.Size || hexSig != strings.ToLower(hexSig) {
		return fmt.Errorf("%w: %s is not v1=<64 lowercase hex digits>", ErrSignatureInvalid, SignatureHeader)
	}
	target := r.URL.RequestURI()
	if strings.ContainsAny(r.Method+target, "\r\n") {
		return fmt.Errorf("%w: line break in the request line", ErrSignatureInvalid)
	}
	want, _ := hex.DecodeString(strings.TrimPrefix(Sign(key, r.Method, target, dev, idem, ts, body), signaturePrefix))
	if !hmac.Equal(got, want) {
		return ErrSignatureInvalid
	}
	if d := now.Sub(time.Unix(ts, 0)); d > maxSkew || d < -maxSkew {
		return fmt.Errorf("%w: signed %s from now, allowed ±%s", ErrSignatureStale, -d.Round(time.Second), maxSkew)
	}
	return nil
}
