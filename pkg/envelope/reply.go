package envelope

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// MaxReplyBytes is the largest downlink envelope the gateway publishes:
// DefaultMaxBytes, so a device's parser with the default limits accepts
// it, and so it stays below the broker's max_packet_size (66560 in
// mosquitto/mosquitto.conf) with room for the topic and the MQTT header.
const MaxReplyBytes = DefaultMaxBytes

// replyEnvelopeOverhead is what AppendJSON adds around a payload for the
// longest device id and timestamp.
const replyEnvelopeOverhead = len(`{"device_id":"`) + MaxDeviceIDLen + len(`","timestamp":`) + 12 +
	len(`,"message_id":"`) + 36 + len(`","payload":`) + len(`,"signature":"`) + SignatureLen + len(`"}`)

// MaxReplyPayloadBytes is the largest payload ReplyPayload returns: a
// reply envelope around it is at most MaxReplyBytes for any device.
const MaxReplyPayloadBytes = MaxReplyBytes - replyEnvelopeOverhead

// truncatedTail ends the payload of a reply whose body was cut.
const truncatedTail = `,"truncated":true}`

// ReplyPayload returns the downlink payload sent after a forward:
//
//	{"in_reply_to":"<uplink message_id>","status":<HTTP status>,"body":<body>}
//
// body is embedded as JSON when it is one valid JSON value in valid UTF-8
// that a device's parser with the default limits accepts (nesting at most
// DefaultMaxDepth once inside the reply envelope), and as a JSON string
// otherwise (an empty body becomes "", invalid UTF-8 becomes U+FFFD).
//
// The payload is at most MaxReplyPayloadBytes. A body that does not fit
// becomes a JSON string of its longest prefix that fits, cut at a
// character boundary, and the payload ends with "truncated":true:
//
//	{"in_reply_to":"…","status":200,"body":"<prefix>","truncated":true}
func ReplyPayload(inReplyTo []byte, status int, body []byte) []byte {
	out := make([]byte, 0, min(64+len(body), MaxReplyPayloadBytes))
	out = append(out, `{"in_reply_to":"`...)
	out = append(out, inReplyTo...)
	out = append(out, `","status":`...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, `,"body":`...)
	// The same strict scanner as Parse: json.Valid would let invalid UTF-8
	// or deep nesting through, and the device would reject the whole reply.
	if v := trimSpace(body); len(v) > 0 && len(out)+len(v)+1 <= MaxReplyPayloadBytes && validValue(v, DefaultMaxDepth-2) {
		out = append(out, v...)
		return append(out, '}')
	}
	mark := len(out)
	if out, whole := appendString(out, body, MaxReplyPayloadBytes-1); whole {
		return append(out, '}')
	}
	out, _ = appendString(out[:mark], body, MaxReplyPayloadBytes-len(truncatedTail))
	return append(out, truncatedTail...)
}

// appendString appends s to dst as a JSON string, invalid UTF-8 replaced
// by U+FFFD, as long as dst stays within limit bytes. It reports whether
// all of s fit; if not, the string holds the longest prefix that did.
func appendString(dst, s []byte, limit int) ([]byte, bool) {
	const hexDigits = "0123456789abcdef"
	limit-- // the closing quote
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		var enc [6]byte
		var n, size int
		switch c := s[i]; {
		case c == '"' || c == '\\':
			enc, n, size = [6]byte{'\\', c}, 2, 1
		case c == '\n':
			enc, n, size = [6]byte{'\\', 'n'}, 2, 1
		case c == '\r':
			enc, n, size = [6]byte{'\\', 'r'}, 2, 1
		case c == '\t':
			enc, n, size = [6]byte{'\\', 't'}, 2, 1
		case c < 0x20:
			enc, n, size = [6]byte{'\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf]}, 6, 1
		case c < utf8.RuneSelf:
			enc, n, size = [6]byte{c}, 1, 1
		default:
			r, sz := utf8.DecodeRune(s[i:])
			n, size = utf8.EncodeRune(enc[:], r), sz // RuneError is U+FFFD
		}
		if len(dst)+n > limit {
			return append(dst, '"'), false
		}
		dst = append(dst, enc[:n]...)
		i += size
	}
	return append(dst, '"'), true
}

// RejectionPayload returns the downlink payload sent after a rejection:
//
//	{"in_reply_to":"<id or null>","error":"<reason>"}
//
// inReplyTo is nil when the message id could not be parsed.
func RejectionPayload(inReplyTo []byte, reason string) []byte {
	out := make([]byte, 0, 96)
	out = append(out, `{"in_reply_to":`...)
	if inReplyTo == nil {
		out = append(out, "null"...)
	} else {
		out = append(out, '"')
		out = append(out, inReplyTo...)
		out = append(out, '"')
	}
	out = append(out, `,"error":`...)
	s, _ := json.Marshal(reason)
	out = append(out, s...)
	return append(out, '}')
}

// validValue reports whether b is exactly one JSON value, strictly valid,
// nested at most maxDepth deep.
func validValue(b []byte, maxDepth int) bool {
	s := scanner{b: b, maxDepth: maxDepth}
	return s.value() == nil && s.i == len(b)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
