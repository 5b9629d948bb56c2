package backendsig

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

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
	// DeviceCounter is X-Device-Counter, which a counter-mode message has
	// in place of X-Device-Timestamp (v2 signs "counter:" and it in
	// DeviceTimestamp's place, so a counter never passes for a time).
	DeviceCounter string
	Seq           string // X-Iotgw-Seq (v2)
}

// deviceFresh is the v2 signing field of the device's freshness proof.
func (h Signed) deviceFresh() string {
	if h.DeviceCounter != "" {
		return "counter:" + h.DeviceCounter
	}
	return h.DeviceTimestamp
}

// Errors of VerifyRequest.
var (
	// ErrSignatureMissing: the request has no signature or no timestamp header.
	ErrSignatureMissing = errors.New("no X-Iotgw-Signature or X-Iotgw-Timestamp header")
	// ErrSignatureInvalid: a malformed header, or a signature that does not match.
	ErrSignatureInvalid = errors.New("bad signature")
	// ErrSignatureStale: a valid signature whose timestamp is outside the window.
	ErrSignatureStale = errors.New("stale signature timestamp")
)

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
		fields = append(fields, h.deviceFresh(), h.Seq)
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
		DeviceTimestamp: one("X-Device-Timestamp"), DeviceCounter: one("X-Device-Counter"), Seq: one("X-Iotgw-Seq")}
	msgID := one("X-Message-Id")
	if bad {
		return fmt.Errorf("%w: a signed header is repeated or holds a line break", ErrSignatureInvalid)
	}
	if h.DeviceTimestamp != "" && h.DeviceCounter != "" {
		return fmt.Errorf("%w: both X-Device-Timestamp and X-Device-Counter", ErrSignatureInvalid)
	}
	// Both are decimal digits as the gateway sends them. Anything else is
	// refused before the signature is checked: v2 signs a counter as
	// "counter:<n>" in the timestamp's field, so "X-Device-Timestamp:
	// counter:42" would otherwise verify as the counter-mode request it
	// was relabelled from.
	if !decimal(h.DeviceTimestamp) || !decimal(h.DeviceCounter) {
		return fmt.Errorf("%w: X-Device-Timestamp or X-Device-Counter is not decimal digits", ErrSignatureInvalid)
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

// decimal reports whether v is empty or decimal digits only.
func decimal(v string) bool {
	for i := range len(v) {
		if v[i] < '0' || v[i] > '9' {
			return false
		}
	}
	return true
}
