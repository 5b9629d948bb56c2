package envelope

import (
	"bytes"
	"crypto/hmac"
	"errors"
	"hash"
	"strconv"
)

// A device without a clock asks the gateway for the time (docs/PROTOCOL.md,
// section 4c): it publishes a time request on device/<id>/time, and the
// gateway answers on device/<id>/response with an ordinary downlink
// envelope, signed with the device's downlink key, whose payload is
// TimeReplyPayload of the request's nonce and whose timestamp is the
// gateway's time. The nonce binds the answer to one request: a captured
// reply is worth nothing for another nonce.

// NonceLen is the length of a time request's nonce in lowercase hex
// characters (16 random bytes).
const NonceLen = 32

// MaxTimeRequestBytes is the largest time request the gateway reads; a
// longer one is malformed.
const MaxTimeRequestBytes = 256

// ParseTimeRequest parses a time request strictly: one JSON object with
// exactly one member, "nonce", whose value is 32 lowercase hex characters
// without escapes; whitespace between tokens is allowed. It returns the
// nonce's characters (aliasing raw) or a *ParseError.
func ParseTimeRequest(raw []byte) ([]byte, error) {
	if len(raw) > MaxTimeRequestBytes {
		return nil, &ParseError{Msg: "time request larger than " + strconv.Itoa(MaxTimeRequestBytes) + " bytes", Offset: MaxTimeRequestBytes}
	}
	s := scanner{b: raw, maxDepth: 1}
	s.ws()
	if !s.eat('{') {
		return nil, s.fail("", "not a JSON object")
	}
	s.ws()
	key, err := s.plainStr(nil, "")
	if err != nil {
		return nil, err
	}
	if string(key) != "nonce" {
		return nil, s.fail("", "unknown field")
	}
	s.ws()
	if !s.eat(':') {
		return nil, s.fail("", "expected ':'")
	}
	s.ws()
	nonce, err := s.plainStr(nil, "nonce")
	if err != nil {
		return nil, err
	}
	if !ValidNonce(nonce) {
		return nil, s.fail("nonce", "must be 32 lowercase hex characters")
	}
	s.ws()
	if !s.eat('}') {
		return nil, s.fail("", "expected '}' (a time request has one member)")
	}
	s.ws()
	if s.i != len(s.b) {
		return nil, s.fail("", "trailing data after the object")
	}
	return nonce, nil
}

// ValidNonce reports whether n is 32 lowercase hex characters.
func ValidNonce(n []byte) bool {
	if len(n) != NonceLen {
		return false
	}
	for _, c := range n {
		if !lowerHex(c) {
			return false
		}
	}
	return true
}

// TimeRequest returns the request a device publishes for nonce (32
// lowercase hex characters): {"nonce":"<nonce>"}.
func TimeRequest(nonce []byte) []byte {
	out := make([]byte, 0, 12+NonceLen)
	out = append(out, `{"nonce":"`...)
	out = append(out, nonce...)
	return append(out, `"}`...)
}

// TimeReplyPayload returns the payload of the gateway's answer to a time
// request, byte for byte: {"time_for":"<nonce>"}. A device compares the
// payload of a verified downlink with these exact bytes for the nonce it
// sent; the envelope's timestamp is then the gateway's time.
func TimeReplyPayload(nonce []byte) []byte {
	out := make([]byte, 0, 15+NonceLen)
	out = append(out, `{"time_for":"`...)
	out = append(out, nonce...)
	return append(out, `"}`...)
}

// The reasons CheckTimeReply refuses a downlink.
var (
	// ErrTimeReplySignature: the downlink does not verify with the
	// device's downlink key, or names another device: it is not from the
	// gateway.
	ErrTimeReplySignature = errors.New("time reply: signature does not verify with the downlink key")
	// ErrTimeReplyOtherNonce: a genuine time reply, but for another
	// request (an old one replayed, or one the device no longer waits for).
	ErrTimeReplyOtherNonce = errors.New("time reply: answers another nonce")
	// ErrNotTimeReply: a genuine downlink that is not a time reply (a
	// reply to a message, or a notice).
	ErrNotTimeReply = errors.New("not a time reply")
)

// CheckTimeReply checks raw, a downlink received on device/<deviceID>/response,
// as the answer to the time request that carried nonce, and returns the
// gateway's time in Unix seconds. mac is NewDownlinkMAC of the device's
// secret (it is Reset first). A device must use the time only when the
// error is nil, and then forget the nonce: each nonce is answered once.
func CheckTimeReply(mac hash.Hash, deviceID string, raw, nonce []byte) (int64, error) {
	e, err := Parse(raw, Limits{})
	if err != nil {
		return 0, err
	}
	if e.IsCounter() {
		return 0, &ParseError{Field: "counter", Msg: "a downlink carries a timestamp"}
	}
	if e.DeviceID != deviceID || !Verify(mac, &e) {
		return 0, ErrTimeReplySignature
	}
	want := TimeReplyPayload(nonce)
	switch {
	case hmac.Equal(e.Payload, want):
		return e.Timestamp, nil
	case len(e.Payload) == len(want) && bytes.HasPrefix(e.Payload, want[:len(`{"time_for":"`)]):
		return 0, ErrTimeReplyOtherNonce
	}
	return 0, ErrNotTimeReply
}
