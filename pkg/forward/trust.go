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
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/iotgw/iotgw/pkg/internal/netx"
	"github.com/iotgw/iotgw/pkg/internal/secretfile"
)

// How the gateway proves itself to the backend (docs/PROTOCOL.md 4b): a
// bearer token, a TLS client certificate, and an HMAC signature over each
// request. Each is optional; each secret lives in its own file, read with
// secretfile (refused when other users can read it), and never appears in
// a log line, an error or a metric.

// Signature headers and schemes (docs/PROTOCOL.md 4b).
const (
	// SignatureHeader carries the scheme ("v2=" or "v1=") and 64 lowercase
	// hex digits.
	SignatureHeader = "X-Iotgw-Signature"
	// TimestampHeader carries the signing time, decimal Unix seconds.
	TimestampHeader = "X-Iotgw-Timestamp"
	// SchemeV2 signs every header the gateway sets from the message
	// (X-Device-Id, Idempotency-Key, X-Device-Timestamp, X-Iotgw-Seq): the
	// default.
	SchemeV2 = "v2"
	// SchemeV1 signs X-Device-Id and Idempotency-Key but not
	// X-Device-Timestamp or X-Iotgw-Seq: for backends not yet upgraded.
	SchemeV1 = "v1"
	// minSigningKey is the shortest signing key accepted, in bytes.
	minSigningKey = 32
)

// signatureLabel starts the signing bytes: it names the scheme and its
// version, so these bytes can never be taken for another message signed
// with the same key, or for the same request under the other scheme.
func signatureLabel(scheme string) string { return "iotgw-backend-" + scheme + "\n" }

// CheckScheme refuses a scheme other than v2 and v1, naming key (the
// setting or flag it came from).
func CheckScheme(key, scheme string) error {
	if scheme != SchemeV2 && scheme != SchemeV1 {
		return fmt.Errorf("%s: must be %s (the default: signs every header) or %s (for a backend not yet upgraded), got %q", key, SchemeV2, SchemeV1, scheme)
	}
	return nil
}

// Signed are the header values a request signature covers besides the
// method, target, timestamp and body. Under v1 only DeviceID and
// IdempotencyKey are signed. An absent header (batch mode has none of
// them; X-Iotgw-Seq is absent when the order is unknown) is "".
type Signed struct {
	DeviceID        string // X-Device-Id
	IdempotencyKey  string // Idempotency-Key
	DeviceTimestamp string // X-Device-Timestamp (v2)
	Seq             string // X-Iotgw-Seq (v2)
}

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
	if err := CheckScheme("backend.signature_scheme", c.SignatureScheme); err != nil {
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
	if c.SigningKeyFile == "" || c.SignatureScheme != SchemeV1 {
		return ""
	}
	return "backend.signature_scheme v1: X-Device-Timestamp and X-Iotgw-Seq are not signed, so someone on the backend's network can change them; move the backend's verifier to v2 (docs/PROTOCOL.md 4b) and drop this setting"
}

// SigningBytes returns what a signature of scheme (v2 or v1) covers: the
// label "iotgw-backend-<scheme>", then method, request target (path and
// query, as sent), X-Device-Id, Idempotency-Key, under v2 also
// X-Device-Timestamp and X-Iotgw-Seq, and the decimal timestamp, each
// followed by "\n", then the body's exact bytes. None of the fields can
// hold a "\n" (VerifyRequest refuses one), and the body is last, so two
// different requests never have the same signing bytes.
func SigningBytes(scheme, method, target string, h Signed, ts int64, body []byte) []byte {
	fields := []string{method, target, h.DeviceID, h.IdempotencyKey}
	if scheme == SchemeV2 {
		fields = append(fields, h.DeviceTimestamp, h.Seq)
	}
	label := signatureLabel(scheme)
	n := len(label) + 21 + len(body)
	for _, f := range fields {
		n += len(f) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, label...)
	for _, f := range fields {
		b = append(append(b, f...), '\n')
	}
	b = append(strconv.AppendInt(b, ts, 10), '\n')
	return append(b, body...)
}

// Sign returns the X-Iotgw-Signature value for a request: the scheme,
// "=", and the lowercase hex of HMAC-SHA256(key, SigningBytes(...)).
func Sign(key []byte, scheme, method, target string, h Signed, ts int64, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write(SigningBytes(scheme, method, target, h, ts, body))
	return scheme + "=" + hex.EncodeToString(m.Sum(nil))
}

// VerifyRequest checks r's signature of scheme (the one the backend
// expects: a request signed under the other scheme is refused, so a
// backend that expects v2 never accepts unsigned X-Device-Timestamp or
// X-Iotgw-Seq values) over body (the request body's exact bytes, read by
// the caller) with key, in constant time, and that its timestamp is
// within maxSkew of now. It returns nil, ErrSignatureMissing,
// ErrSignatureInvalid (malformed or repeated headers, another scheme, an
// X-Message-Id other than the signed Idempotency-Key, or no match) or
// ErrSignatureStale (a valid signature, but too old or too far ahead: a
// replay or a clock off).
func VerifyRequest(key []byte, scheme string, r *http.Request, body []byte, now time.Time, maxSkew time.Duration) error {
	if err := CheckScheme("scheme", scheme); err != nil {
		return err
	}
	bad := false
	one := func(name string) string {
		v := r.Header.Values(name)
		if len(v) > 1 || len(v) == 1 && strings.ContainsAny(v[0], "\r\n") {
			bad = true
		}
		if len(v) == 0 {
			return ""
		}
		return v[0]
	}
	sig, tsRaw := one(SignatureHeader), one(TimestampHeader)
	h := Signed{DeviceID: one("X-Device-Id"), IdempotencyKey: one("Idempotency-Key"),
		DeviceTimestamp: one("X-Device-Timestamp"), Seq: one("X-Iotgw-Seq")}
	msgID := one("X-Message-Id")
	if bad {
		return fmt.Errorf("%w: a signed header is repeated or holds a line break", ErrSignatureInvalid)
	}
	// X-Message-Id is not signed on its own: the gateway sends it equal to
	// the signed Idempotency-Key, so any other value was changed on the way.
	if msgID != "" && msgID != h.IdempotencyKey {
		return fmt.Errorf("%w: X-Message-Id differs from the signed Idempotency-Key", ErrSignatureInvalid)
	}
	if sig == "" || tsRaw == "" {
		return ErrSignatureMissing
	}
	ts, err := strconv.ParseInt(tsRaw, 10, 64)
	if err != nil || ts < 0 || strconv.FormatInt(ts, 10) != tsRaw {
		return fmt.Errorf("%w: %s is not decimal Unix seconds", ErrSignatureInvalid, TimestampHeader)
	}
	gotScheme, hexSig, _ := strings.Cut(sig, "=")
	if gotScheme != scheme && (gotScheme == SchemeV1 || gotScheme == SchemeV2) {
		return fmt.Errorf("%w: signed with scheme %s, this backend expects %s", ErrSignatureInvalid, gotScheme, scheme)
	}
	got, err := hex.DecodeString(hexSig)
	if gotScheme != scheme || err != nil || len(got) != sha256.Size || hexSig != strings.ToLower(hexSig) {
		return fmt.Errorf("%w: %s is not %s=<64 lowercase hex digits>", ErrSignatureInvalid, SignatureHeader, scheme)
	}
	target := r.URL.RequestURI()
	if strings.ContainsAny(r.Method+target, "\r\n") {
		return fmt.Errorf("%w: line break in the request line", ErrSignatureInvalid)
	}
	m := hmac.New(sha256.New, key)
	m.Write(SigningBytes(scheme, r.Method, target, h, ts, body))
	if !hmac.Equal(got, m.Sum(nil)) {
		return ErrSignatureInvalid
	}
	if d := now.Sub(time.Unix(ts, 0)); d > maxSkew || d < -maxSkew {
		return fmt.Errorf("%w: signed %s from now, allowed ±%s", ErrSignatureStale, -d.Round(time.Second), maxSkew)
	}
	return nil
}
