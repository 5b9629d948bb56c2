package envelope

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"strconv"
)

// Defaults for Limits.
const (
	// DefaultMaxBytes is the default largest message accepted (64 KiB).
	DefaultMaxBytes = 64 << 10
	// DefaultMaxDepth is the default deepest nesting of objects and arrays,
	// counting the envelope itself as depth 1.
	DefaultMaxDepth = 32
	// MaxDeviceIDLen is the longest device id.
	MaxDeviceIDLen = 64
	// SignatureLen is the length of a signature in hex characters.
	SignatureLen = 64
)

// Limits bound what Parse accepts.
type Limits struct {
	// MaxBytes is the largest message, in bytes. Zero means DefaultMaxBytes.
	MaxBytes int
	// MaxDepth is the deepest nesting. Zero means DefaultMaxDepth.
	MaxDepth int
}

// Envelope is one parsed message. Its byte slices alias the input given to
// Parse; copy them if the input buffer is reused.
type Envelope struct {
	// DeviceID is the device id, 1-64 chars of [A-Za-z0-9_.-], not starting with a dot.
	DeviceID string
	// Timestamp is the message time in Unix seconds.
	Timestamp int64
	// TimestampRaw is the timestamp's digits exactly as sent; nil for a
	// counter-mode message.
	TimestampRaw []byte
	// Counter is a counter-mode message's counter (docs/PROTOCOL.md,
	// section 2a); zero for a timestamp-mode message.
	Counter int64
	// CounterRaw is the counter's digits exactly as sent; nil for a
	// timestamp-mode message. A message carries a timestamp or a
	// counter, never both.
	CounterRaw []byte
	// MessageID is the canonical lowercase UUID text (36 bytes).
	MessageID []byte
	// Payload is the payload value's exact bytes, whitespace included.
	Payload []byte
	// Signature is the decoded HMAC-SHA256 tag.
	Signature [sha256.Size]byte
}

// IsCounter reports whether e proves its freshness with a counter
// instead of a timestamp.
func (e *Envelope) IsCounter() bool { return e.CounterRaw != nil }

// CounterLabel opens the signing bytes of a counter-mode message. A device
// id cannot hold a '/', so no timestamp-mode message (whose signing bytes
// open with the device id) signs the same bytes as a counter-mode one: a
// time-mode message with its timestamp renamed to a counter does not
// verify (vector bad_signature_timestamp_renamed_counter).
const CounterLabel = "iotgw/v1/counter"

// UUID returns the message id as 16 bytes. It is valid only for an Envelope
// returned by Parse (or built by New).
func (e *Envelope) UUID() [16]byte { return uuidBytes(e.MessageID) }

// SigningBytes appends the bytes that are signed to dst and returns it:
//
//	device_id "\n" timestamp "\n" message_id "\n" payload
func SigningBytes(dst []byte, deviceID string, timestamp []byte, messageID []byte, payload []byte) []byte {
	dst = append(dst, deviceID...)
	dst = append(dst, '\n')
	dst = append(dst, timestamp...)
	dst = append(dst, '\n')
	dst = append(dst, messageID...)
	dst = append(dst, '\n')
	return append(dst, payload...)
}

// CounterSigningBytes appends the signing bytes of a counter-mode message
// to dst and returns it:
//
//	"iotgw/v1/counter" "\n" device_id "\n" counter "\n" message_id "\n" payload
func CounterSigningBytes(dst []byte, deviceID string, counter []byte, messageID []byte, payload []byte) []byte {
	dst = append(dst, CounterLabel...)
	dst = append(dst, '\n')
	return SigningBytes(dst, deviceID, counter, messageID, payload)
}

// WriteSigned writes the signing bytes of e to h piece by piece, without
// building them in one buffer. (Passing the device id to the hash
// interface may still allocate a small copy; BenchmarkVerify counts it.)
func WriteSigned(h hash.Hash, e *Envelope) {
	var nl = []byte{'\n'}
	fresh := e.TimestampRaw
	if e.IsCounter() {
		h.Write([]byte(CounterLabel)) //nolint:errcheck // hash writes never fail
		h.Write(nl)
		fresh = e.CounterRaw
	}
	h.Write([]byte(e.DeviceID)) //nolint:errcheck // hash writes never fail
	h.Write(nl)
	h.Write(fresh)
	h.Write(nl)
	h.Write(e.MessageID)
	h.Write(nl)
	h.Write(e.Payload)
}

// NewMAC returns an HMAC-SHA256 keyed with the UTF-8 bytes of secret.
func NewMAC(secret []byte) hash.Hash { return hmac.New(sha256.New, secret) }

// Sign computes the signature of e with secret.
func Sign(secret []byte, e *Envelope) [sha256.Size]byte {
	return SignWith(NewMAC(secret), e)
}

// SignWith computes the signature of e with mac, which must be an
// HMAC-SHA256 from NewMAC. mac is Reset first, so it can be reused.
func SignWith(mac hash.Hash, e *Envelope) [sha256.Size]byte {
	mac.Reset()
	WriteSigned(mac, e)
	var out [sha256.Size]byte
	mac.Sum(out[:0])
	return out
}

// Verify reports whether e's signature is valid under mac, comparing in
// constant time. mac is Reset first, so it can be reused.
func Verify(mac hash.Hash, e *Envelope) bool {
	want := SignWith(mac, e)
	return hmac.Equal(want[:], e.Signature[:])
}

// New builds a signed envelope for deviceID with the given timestamp,
// message id (canonical lowercase UUID text) and raw JSON payload. It does
// not validate payload; callers pass JSON they produced.
func New(secret []byte, deviceID string, timestamp int64, messageID string, payload []byte) Envelope {
	e := Envelope{
		DeviceID:     deviceID,
		Timestamp:    timestamp,
		TimestampRaw: strconv.AppendInt(nil, timestamp, 10),
		MessageID:    []byte(messageID),
		Payload:      payload,
	}
	e.Signature = Sign(secret, &e)
	return e
}

// NewCounter builds a signed counter-mode envelope (docs/PROTOCOL.md,
// section 2a). counter must be positive for the gateway to accept it.
func NewCounter(secret []byte, deviceID string, counter int64, messageID string, payload []byte) Envelope {
	e := Envelope{
		DeviceID:   deviceID,
		Counter:    counter,
		CounterRaw: strconv.AppendInt(nil, counter, 10),
		MessageID:  []byte(messageID),
		Payload:    payload,
	}
	e.Signature = Sign(secret, &e)
	return e
}

// AppendJSON appends e as a wire message, fields in the documented order,
// with the payload bytes copied verbatim.
func AppendJSON(dst []byte, e *Envelope) []byte {
	dst = append(dst, `{"device_id":"`...)
	dst = append(dst, e.DeviceID...) // charset needs no escaping
	if e.IsCounter() {
		dst = append(dst, `","counter":`...)
		dst = append(dst, e.CounterRaw...)
	} else {
		dst = append(dst, `","timestamp":`...)
		dst = append(dst, e.TimestampRaw...)
	}
	dst = append(dst, `,"message_id":"`...)
	dst = append(dst, e.MessageID...)
	dst = append(dst, `","payload":`...)
	dst = append(dst, e.Payload...)
	dst = append(dst, `,"signature":"`...)
	dst = hex.AppendEncode(dst, e.Signature[:])
	return append(dst, `"}`...)
}

// ValidDeviceID reports whether id is 1-64 chars of [A-Za-z0-9_.-] that
// does not start with a dot. The id becomes a path segment (backend URL,
// certificate file, topic), so "." and ".." and hidden names are refused.
func ValidDeviceID(id string) bool {
	if len(id) == 0 || len(id) > MaxDeviceIDLen || id[0] == '.' {
		return false
	}
	for i := 0; i < len(id); i++ {
		if !deviceIDChar(id[i]) {
			return false
		}
	}
	return true
}

func deviceIDChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
}

// ValidMessageID reports whether id is a canonical lowercase UUID text.
func ValidMessageID(id []byte) bool {
	if len(id) != 36 {
		return false
	}
	for i, c := range id {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !lowerHex(c) {
				return false
			}
		}
	}
	return true
}

func lowerHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

func uuidBytes(id []byte) [16]byte {
	var out [16]byte
	if len(id) != 36 {
		return out
	}
	j := 0
	for i := 0; i < 36 && j < 16; {
		if id[i] == '-' {
			i++
			continue
		}
		out[j] = unhex(id[i])<<4 | unhex(id[i+1])
		i += 2
		j++
	}
	return out
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	}
	return 0
}
