package envelope

import (
	"bytes"
	"encoding/hex"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// ParseError says why a message is malformed. Field is the top-level field
// concerned, or "" for the message as a whole. It is safe to log: it never
// quotes payload content.
type ParseError struct {
	Field  string
	Msg    string
	Offset int
}

// Error returns a one-line description such as "timestamp: not an unsigned integer".
func (e *ParseError) Error() string {
	if e.Field == "" {
		return e.Msg + " at byte " + strconv.Itoa(e.Offset)
	}
	return e.Field + ": " + e.Msg
}

const (
	fDeviceID = 1 << iota
	fTimestamp
	fMessageID
	fPayload
	fSignature
	fCounter
	// fAll is every member a message must have, with fTimestamp standing
	// for "fTimestamp or fCounter" (a message has exactly one of them).
	fAll = fDeviceID | fTimestamp | fMessageID | fPayload | fSignature
)

// MaxCounter is the largest counter a message may carry (2^63-1): it fits
// the signed 64-bit integers of SQLite and PostgreSQL.
const MaxCounter = 1<<63 - 1

// Parse parses one message strictly. It returns a *ParseError for anything
// the contract calls malformed: invalid JSON or UTF-8, an unknown, missing or
// duplicate top-level field, a field of the wrong form, nesting deeper than
// lim.MaxDepth, or more than lim.MaxBytes bytes.
func Parse(raw []byte, lim Limits) (Envelope, error) {
	var e Envelope
	maxBytes, maxDepth := lim.MaxBytes, lim.MaxDepth
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if maxDepth <= 0 {
		maxDepth = DefaultMaxDepth
	}
	if len(raw) > maxBytes {
		return e, &ParseError{Msg: "message larger than " + strconv.Itoa(maxBytes) + " bytes", Offset: maxBytes}
	}
	s := scanner{b: raw, maxDepth: maxDepth}
	// first returns the soft error when there is one, else err: the
	// earliest problem is the one reported.
	first := func(err error) (Envelope, error) {
		if s.soft != nil {
			return e, s.soft
		}
		return e, err
	}
	s.ws()
	if !s.eat('{') {
		return first(s.fail("", "not a JSON object"))
	}
	s.depth = 1
	seen := 0
	s.ws()
	if s.eat('}') {
		return first(s.fail("", "missing fields"))
	}
	var keyBuf [16]byte
	for {
		s.ws()
		key, err := s.plainStr(keyBuf[:0], "")
		if err != nil {
			return first(err)
		}
		s.ws()
		if !s.eat(':') {
			return first(s.fail("", "expected ':'"))
		}
		s.ws()
		var bit int
		switch string(key) {
		case "device_id":
			bit = fDeviceID
		case "timestamp":
			bit = fTimestamp
		case "message_id":
			bit = fMessageID
		case "payload":
			bit = fPayload
		case "signature":
			bit = fSignature
		case "counter":
			bit = fCounter
		default:
			return first(s.fail("", "unknown field"))
		}
		if seen&bit != 0 {
			return first(s.fail(string(key), "duplicate field"))
		}
		seen |= bit
		if seen&(fTimestamp|fCounter) == fTimestamp|fCounter {
			return first(s.fail(string(key), "a message carries a timestamp or a counter, not both"))
		}
		if err := s.field(bit, &e); err != nil {
			return first(err)
		}
		s.ws()
		if s.eat(',') {
			continue
		}
		if s.eat('}') {
			break
		}
		return first(s.fail("", "expected ',' or '}'"))
	}
	s.ws()
	if s.i != len(s.b) {
		return first(s.fail("", "trailing data after the object"))
	}
	if seen&fCounter != 0 {
		seen |= fTimestamp // the counter stands in for the timestamp
	}
	if seen != fAll|seen&fCounter {
		return first(&ParseError{Field: missingField(seen), Msg: "missing field", Offset: s.i})
	}
	if s.soft != nil {
		return e, s.soft
	}
	return e, nil
}

func missingField(seen int) string {
	for _, f := range []struct {
		bit  int
		name string
	}{{fDeviceID, "device_id"}, {fTimestamp, "timestamp"}, {fMessageID, "message_id"}, {fPayload, "payload"}, {fSignature, "signature"}} {
		if seen&f.bit == 0 {
			return f.name
		}
	}
	return ""
}

type scanner struct {
	b        []byte
	i        int
	depth    int
	maxDepth int
	// soft is the first error found in a value that was still read to its
	// end (a timestamp out of range): Parse goes on and returns it.
	soft *ParseError
}

func (s *scanner) fail(field, msg string) *ParseError {
	return &ParseError{Field: field, Msg: msg, Offset: s.i}
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) field(bit int, e *Envelope) error {
	switch bit {
	case fDeviceID:
		v, err := s.plainStr(nil, "device_id")
		if err != nil {
			return err
		}
		if len(v) == 0 || len(v) > MaxDeviceIDLen {
			return s.fail("device_id", "must be 1-64 characters")
		}
		for _, c := range v {
			if !deviceIDChar(c) {
				return s.fail("device_id", "must be characters of [A-Za-z0-9_.-]")
			}
		}
		if v[0] == '.' {
			return s.fail("device_id", "must not start with a dot")
		}
		e.DeviceID = string(v)
	case fTimestamp:
		digits, ok, err := s.unsigned("timestamp", "must be an unsigned integer of Unix seconds")
		if !ok {
			return err
		}
		if len(digits) > 12 { // year 33658; anything longer is nonsense (e.g. milliseconds)
			s.soft = s.fail("timestamp", "out of range")
			return nil
		}
		ts, _ := strconv.ParseInt(string(digits), 10, 64) // ≤12 digits: cannot fail
		e.Timestamp, e.TimestampRaw = ts, digits
	case fCounter:
		digits, ok, err := s.unsigned("counter", "must be an unsigned integer")
		if !ok {
			return err
		}
		n, err := strconv.ParseInt(string(digits), 10, 64)
		if err != nil { // more than MaxCounter
			s.soft = s.fail("counter", "larger than 9223372036854775807")
			return nil
		}
		e.Counter, e.CounterRaw = n, digits
	case fMessageID:
		v, err := s.plainStr(nil, "message_id")
		if err != nil {
			return err
		}
		if !ValidMessageID(v) {
			return s.fail("message_id", "must be a canonical lowercase UUID")
		}
		e.MessageID = v
	case fSignature:
		v, err := s.plainStr(nil, "signature")
		if err != nil {
			return err
		}
		if len(v) != SignatureLen {
			return s.fail("signature", "must be 64 lowercase hex characters")
		}
		for _, c := range v {
			if !lowerHex(c) {
				return s.fail("signature", "must be 64 lowercase hex characters")
			}
		}
		hex.Decode(e.Signature[:], v) //nolint:errcheck // checked above
	case fPayload:
		start := s.i
		if err := s.value(); err != nil {
			return err
		}
		e.Payload = s.b[start:s.i]
	}
	return nil
}

// unsigned reads the plain digits of an unsigned integer member at s.i.
// It returns them and ok, or ok false and the error to return: a hard one
// (no digits, a fraction or an exponent: msg), or nil after noting a
// leading zero as the soft error. Past a whole number, a bad one is noted
// and the parse reads on (soft), so that the message_id after it still
// reaches the rejection notice.
func (s *scanner) unsigned(field, msg string) ([]byte, bool, error) {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	digits := s.b[start:s.i]
	if len(digits) == 0 || s.i < len(s.b) && (s.b[s.i] == '.' || s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		return nil, false, s.fail(field, msg)
	}
	if len(digits) > 1 && digits[0] == '0' {
		s.soft = s.fail(field, "leading zero")
		return nil, false, nil
	}
	return digits, true, nil
}

// str reads a JSON string at s.i. When the string has no escapes the result
// aliases the input; otherwise it is decoded into dst.
func (s *scanner) str(dst []byte, field string) ([]byte, error) {
	if !s.eat('"') {
		return nil, s.fail(field, "expected a string")
	}
	start := s.i
	escaped := false
	for {
		if s.i >= len(s.b) {
			return nil, s.fail(field, "unterminated string")
		}
		c := s.b[s.i]
		switch {
		case c == '"':
			raw := s.b[start:s.i]
			s.i++
			if !escaped {
				return raw, nil
			}
			return unescape(dst, raw), nil
		case c == '\\':
			escaped = true
			if err := s.escape(field); err != nil {
				return nil, err
			}
		case c < 0x20:
			return nil, s.fail(field, "control character in string")
		case c < utf8.RuneSelf:
			s.i++
		default:
			r, n := utf8.DecodeRune(s.b[s.i:])
			if r == utf8.RuneError && n <= 1 {
				return nil, s.fail(field, "invalid UTF-8")
			}
			s.i += n
		}
	}
}

// plainStr reads a JSON string that must not contain any escape: member
// names, device_id, message_id and signature have one spelling only, so
// one signature never verifies two different messages.
func (s *scanner) plainStr(dst []byte, field string) ([]byte, error) {
	start := s.i
	v, err := s.str(dst, field)
	if err != nil {
		return nil, err
	}
	if bytes.IndexByte(s.b[start:s.i], '\\') >= 0 {
		s.i = start
		if field == "" {
			return nil, s.fail("", "escape in a member name")
		}
		return nil, s.fail(field, "must not contain escapes")
	}
	return v, nil
}

// escape validates one escape sequence starting at the backslash. A \u
// escape of a UTF-16 high surrogate must be followed at once by the escape
// of a low surrogate; any other surrogate escape is unpaired and refused
// (it decodes to no character, and strict backends refuse it).
func (s *scanner) escape(field string) error {
	s.i++ // backslash
	if s.i >= len(s.b) {
		return s.fail(field, "unterminated string")
	}
	switch s.b[s.i] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		s.i++
		return nil
	case 'u':
		r, ok := s.hexEscape(s.i - 1)
		if !ok {
			return s.fail(field, "bad \\u escape")
		}
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return s.fail(field, "unpaired surrogate escape")
		case r >= 0xD800 && r <= 0xDBFF:
			if lo, ok := s.hexEscape(s.i + 5); !ok || lo < 0xDC00 || lo > 0xDFFF {
				return s.fail(field, "unpaired surrogate escape")
			}
			s.i += 6
		}
		s.i += 5
		return nil
	}
	return s.fail(field, "bad escape")
}

// hexEscape decodes the \uXXXX escape at s.b[at:], if there is one.
func (s *scanner) hexEscape(at int) (uint16, bool) {
	if at+6 > len(s.b) || s.b[at] != '\\' || s.b[at+1] != 'u' {
		return 0, false
	}
	for _, c := range s.b[at+2 : at+6] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return 0, false
		}
	}
	return hex4(s.b[at+2 : at+6]), true
}

// unescape decodes a validated JSON string body.
func unescape(dst, raw []byte) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		i++
		switch raw[i] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := rune(hex4(raw[i+1 : i+5]))
			i += 4
			if utf16.IsSurrogate(r) {
				// A pair is \uD8xx\uDCxx; the scanner checked both escapes.
				r2 := utf8.RuneError
				if i+7 <= len(raw) && raw[i+1] == '\\' && raw[i+2] == 'u' {
					r2 = rune(hex4(raw[i+3 : i+7]))
				}
				if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
					r = d
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, raw[i])
		}
		i++
	}
	return dst
}

func hex4(b []byte) uint16 {
	return uint16(unhex(b[0]))<<12 | uint16(unhex(b[1]))<<8 | uint16(unhex(b[2]))<<4 | uint16(unhex(b[3]))
}

// value validates any JSON value at s.i, tracking depth.
func (s *scanner) value() error {
	if s.i >= len(s.b) {
		return s.fail("payload", "unexpected end of input")
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return s.object()
	case c == '[':
		return s.array()
	case c == '"':
		_, err := s.str(nil, "payload")
		return err
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return s.fail("payload", "invalid JSON value")
}

func (s *scanner) enter() error {
	s.depth++
	if s.depth > s.maxDepth {
		return s.fail("payload", "nested deeper than "+strconv.Itoa(s.maxDepth))
	}
	return nil
}

func (s *scanner) object() error {
	if err := s.enter(); err != nil {
		return err
	}
	s.i++ // '{'
	s.ws()
	if s.eat('}') {
		s.depth--
		return nil
	}
	for {
		s.ws()
		if _, err := s.str(nil, "payload"); err != nil {
			return err
		}
		s.ws()
		if !s.eat(':') {
			return s.fail("payload", "expected ':'")
		}
		s.ws()
		if err := s.value(); err != nil {
			return err
		}
		s.ws()
		if s.eat(',') {
			continue
		}
		if s.eat('}') {
			s.depth--
			return nil
		}
		return s.fail("payload", "expected ',' or '}'")
	}
}

func (s *scanner) array() error {
	if err := s.enter(); err != nil {
		return err
	}
	s.i++ // '['
	s.ws()
	if s.eat(']') {
		s.depth--
		return nil
	}
	for {
		s.ws()
		if err := s.value(); err != nil {
			return err
		}
		s.ws()
		if s.eat(',') {
			continue
		}
		if s.eat(']') {
			s.depth--
			return nil
		}
		return s.fail("payload", "expected ',' or ']'")
	}
}

func (s *scanner) digits() int {
	n := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

func (s *scanner) number() error {
	s.eat('-')
	if s.eat('0') {
		if s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			return s.fail("payload", "leading zero in number")
		}
	} else if s.digits() == 0 {
		return s.fail("payload", "invalid number")
	}
	if s.eat('.') && s.digits() == 0 {
		return s.fail("payload", "invalid number")
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if s.digits() == 0 {
			return s.fail("payload", "invalid number")
		}
	}
	return nil
}

func (s *scanner) literal(lit string) error {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return s.fail("payload", "invalid literal")
	}
	s.i += len(lit)
	return nil
}
