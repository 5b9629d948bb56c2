package envelope

import (
	"encoding/json"
	"strconv"
)

// ReplyPayload returns the downlink payload sent after a forward:
//
//	{"in_reply_to":"<uplink message_id>","status":<HTTP status>,"body":<body>}
//
// body is embedded as JSON when it is one valid JSON value in valid UTF-8
// that a device's parser with the default limits accepts (nesting at most
// DefaultMaxDepth once inside the reply envelope), and as a JSON string
// otherwise (an empty body becomes "").
func ReplyPayload(inReplyTo []byte, status int, body []byte) []byte {
	out := make([]byte, 0, 64+len(body))
	out = append(out, `{"in_reply_to":"`...)
	out = append(out, inReplyTo...)
	out = append(out, `","status":`...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, `,"body":`...)
	// The same strict scanner as Parse: json.Valid would let invalid UTF-8
	// or deep nesting through, and the device would reject the whole reply.
	if len(body) > 0 && validValue(trimSpace(body), DefaultMaxDepth-2) {
		out = append(out, trimSpace(body)...)
	} else {
		s, _ := json.Marshal(string(body)) // invalid UTF-8 becomes U+FFFD
		out = append(out, s...)
	}
	return append(out, '}')
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
