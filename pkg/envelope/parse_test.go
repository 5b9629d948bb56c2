package envelope_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/envelope"
)

const (
	goodSig  = "340b3bde06ab3037322bb2931e4f0172dc9a1f50ca04129d7c97d67518418353"
	goodMsg  = `{"device_id":"sensor_001","timestamp":1727712000,"message_id":"550e8400-e29b-41d4-a716-446655440000","payload":{"temperature":22.5},"signature":"` + goodSig + `"}`
	goodHead = `{"device_id":"sensor_001","timestamp":1727712000,"message_id":"550e8400-e29b-41d4-a716-446655440000",`
	goodTail = `,"signature":"` + goodSig + `"}`
)

// withPayload returns goodMsg with payload p (its signature no longer matches,
// which Parse does not check).
func withPayload(p string) string { return goodHead + `"payload":` + p + goodTail }

// withTimestamp returns goodMsg with the timestamp token ts.
func withTimestamp(ts string) string { return strings.Replace(goodMsg, "1727712000", ts, 1) }

// msgOfSize returns a well-formed message of exactly n bytes (n ≥ 230).
func msgOfSize(n int) string {
	m := withPayload(`{"pad":""}`)
	return withPayload(`{"pad":"` + strings.Repeat("x", n-len(m)) + `"}`)
}

func nested(n int) string { return strings.Repeat("[", n) + "1" + strings.Repeat("]", n) }

func TestParseMalformed(t *testing.T) {
	id65 := strings.Repeat("d", 65)
	tests := []struct {
		name  string
		msg   string
		lim   envelope.Limits
		field string // ParseError.Field; "" for the message as a whole
	}{
		{"empty", ``, envelope.Limits{}, ""},
		{"whitespace only", " \n", envelope.Limits{}, ""},
		{"array", `[]`, envelope.Limits{}, ""},
		{"empty object", `{}`, envelope.Limits{}, ""},
		{"byte order mark", "\ufeff" + goodMsg, envelope.Limits{}, ""},
		{"unknown field", strings.TrimSuffix(goodMsg, "}") + `,"extra":1}`, envelope.Limits{}, ""},
		{"unknown field by case", strings.Replace(goodMsg, `"device_id"`, `"Device_id"`, 1), envelope.Limits{}, ""},
		{"missing device_id", `{"timestamp":1727712000,"message_id":"550e8400-e29b-41d4-a716-446655440000","payload":{}` + goodTail, envelope.Limits{}, "device_id"},
		{"missing timestamp", strings.Replace(goodMsg, `"timestamp":1727712000,`, ``, 1), envelope.Limits{}, "timestamp"},
		{"missing message_id", strings.Replace(goodMsg, `"message_id":"550e8400-e29b-41d4-a716-446655440000",`, ``, 1), envelope.Limits{}, "message_id"},
		{"missing payload", goodHead + strings.TrimPrefix(goodTail, ","), envelope.Limits{}, "payload"},
		{"missing signature", goodHead + `"payload":{}}`, envelope.Limits{}, "signature"},
		{"duplicate payload", goodHead + `"payload":1,"payload":2` + goodTail, envelope.Limits{}, "payload"},
		{"duplicate by escape", goodHead + `"payload":1,"p\u0061yload":2` + goodTail, envelope.Limits{}, ""},
		// Finding 8: one signature must not verify two spellings of a message.
		{"escaped member name", strings.Replace(goodMsg, `"device_id"`, `"device\u005fid"`, 1), envelope.Limits{}, ""},
		{"escaped member name, solidus", strings.Replace(goodMsg, `"payload"`, `"pay\/load"`, 1), envelope.Limits{}, ""},
		{"device_id escaped", strings.Replace(goodMsg, "sensor_001", `sensor\u005f001`, 1), envelope.Limits{}, "device_id"},
		{"device_id simple escape", strings.Replace(goodMsg, "sensor_001", `sensor\/001`, 1), envelope.Limits{}, "device_id"},
		{"message_id escaped", strings.Replace(goodMsg, "550e8400-", `550e8400\u002d`, 1), envelope.Limits{}, "message_id"},
		{"signature escaped", strings.Replace(goodMsg, goodSig, `\u0033`+goodSig[1:], 1), envelope.Limits{}, "signature"},
		{"lone high surrogate", withPayload(`"\ud800"`), envelope.Limits{}, "payload"},
		{"lone low surrogate", withPayload(`"\udc00"`), envelope.Limits{}, "payload"},
		{"high then non-low", withPayload(`"\ud800\u0041"`), envelope.Limits{}, "payload"},
		{"high then high", withPayload(`"\ud800\ud800"`), envelope.Limits{}, "payload"},
		{"high then raw text", withPayload(`"\ud83dx"`), envelope.Limits{}, "payload"},
		{"high then simple escape", withPayload(`"\ud83d\n"`), envelope.Limits{}, "payload"},
		{"reversed pair", withPayload(`"\ude00\ud83d"`), envelope.Limits{}, "payload"},
		{"lone surrogate in payload key", withPayload(`{"\ud800":1}`), envelope.Limits{}, "payload"},
		{"high surrogate at end of input", goodHead + `"payload":"\ud800`, envelope.Limits{}, "payload"},
		// Finding 7: ids that are path segments.
		{"device_id dot", strings.Replace(goodMsg, `sensor_001`, `.`, 1), envelope.Limits{}, "device_id"},
		{"device_id dot dot", strings.Replace(goodMsg, `sensor_001`, `..`, 1), envelope.Limits{}, "device_id"},
		{"device_id leading dot", strings.Replace(goodMsg, `sensor_001`, `.sensor_001`, 1), envelope.Limits{}, "device_id"},
		{"duplicate signature", strings.TrimSuffix(goodMsg, "}") + goodTail, envelope.Limits{}, "signature"},
		{"trailing comma", strings.TrimSuffix(goodMsg, "}") + `,}`, envelope.Limits{}, ""},
		{"trailing data", goodMsg + "x", envelope.Limits{}, ""},
		{"two objects", goodMsg + goodMsg, envelope.Limits{}, ""},
		{"truncated", goodMsg[:len(goodMsg)-1], envelope.Limits{}, ""},
		{"missing colon", strings.Replace(goodMsg, `"payload":`, `"payload" `, 1), envelope.Limits{}, ""},
		{"single-quoted key", strings.Replace(goodMsg, `"payload"`, `'payload'`, 1), envelope.Limits{}, ""},
		{"device_id empty", strings.Replace(goodMsg, `"sensor_001"`, `""`, 1), envelope.Limits{}, "device_id"},
		{"device_id 65 chars", strings.Replace(goodMsg, `sensor_001`, id65, 1), envelope.Limits{}, "device_id"},
		{"device_id slash", strings.Replace(goodMsg, `sensor_001`, `sensor/001`, 1), envelope.Limits{}, "device_id"},
		{"device_id space", strings.Replace(goodMsg, `sensor_001`, `sensor 001`, 1), envelope.Limits{}, "device_id"},
		{"device_id non-ASCII", strings.Replace(goodMsg, `sensor_001`, `sensör`, 1), envelope.Limits{}, "device_id"},
		{"device_id number", strings.Replace(goodMsg, `"sensor_001"`, `1`, 1), envelope.Limits{}, "device_id"},
		{"device_id null", strings.Replace(goodMsg, `"sensor_001"`, `null`, 1), envelope.Limits{}, "device_id"},
		{"timestamp negative", withTimestamp("-1"), envelope.Limits{}, "timestamp"},
		{"timestamp fraction", withTimestamp("1.5"), envelope.Limits{}, "timestamp"},
		{"timestamp zero fraction", withTimestamp("1727712000.0"), envelope.Limits{}, "timestamp"},
		{"timestamp exponent", withTimestamp("1e9"), envelope.Limits{}, "timestamp"},
		{"timestamp exponent upper", withTimestamp("1E9"), envelope.Limits{}, "timestamp"},
		{"timestamp leading zero", withTimestamp("017"), envelope.Limits{}, "timestamp"},
		{"timestamp plus sign", withTimestamp("+1727712000"), envelope.Limits{}, "timestamp"},
		{"timestamp string", withTimestamp(`"1727712000"`), envelope.Limits{}, "timestamp"},
		{"timestamp 13 digits", withTimestamp("1727712000000"), envelope.Limits{}, "timestamp"},
		{"timestamp null", withTimestamp("null"), envelope.Limits{}, "timestamp"},
		{"timestamp digits then letter", withTimestamp("1727712000x"), envelope.Limits{}, ""},
		{"message_id uppercase", strings.Replace(goodMsg, "550e8400-e29b-41d4-a716-446655440000", "550E8400-E29B-41D4-A716-446655440000", 1), envelope.Limits{}, "message_id"},
		{"message_id no hyphens", strings.Replace(goodMsg, "550e8400-e29b-41d4-a716-446655440000", "550e8400e29b41d4a716446655440000", 1), envelope.Limits{}, "message_id"},
		{"message_id braces", strings.Replace(goodMsg, "550e8400-e29b-41d4-a716-446655440000", "{550e8400-e29b-41d4-a716-446655440000}", 1), envelope.Limits{}, "message_id"},
		{"message_id hyphen moved", strings.Replace(goodMsg, "550e8400-e29b", "550e840-0e29b", 1), envelope.Limits{}, "message_id"},
		{"message_id not hex", strings.Replace(goodMsg, "550e8400-", "550g8400-", 1), envelope.Limits{}, "message_id"},
		{"signature uppercase", strings.Replace(goodMsg, goodSig, strings.ToUpper(goodSig), 1), envelope.Limits{}, "signature"},
		{"signature 63 chars", strings.Replace(goodMsg, goodSig, goodSig[:63], 1), envelope.Limits{}, "signature"},
		{"signature 65 chars", strings.Replace(goodMsg, goodSig, goodSig+"0", 1), envelope.Limits{}, "signature"},
		{"signature base64", strings.Replace(goodMsg, goodSig, "NAs73garMDcyK7KTHk8BctyaH1DKBBKdfJfWdRhBg1M=", 1), envelope.Limits{}, "signature"},
		{"signature not hex", strings.Replace(goodMsg, goodSig, "zz"+goodSig[2:], 1), envelope.Limits{}, "signature"},
		{"invalid UTF-8 in payload", withPayload("\"caf\xff\""), envelope.Limits{}, "payload"},
		{"UTF-8 surrogate in payload", withPayload("\"\xed\xa0\x80\""), envelope.Limits{}, "payload"},
		{"overlong UTF-8 in payload", withPayload("\"\xc0\xaf\""), envelope.Limits{}, "payload"},
		{"truncated UTF-8 in payload", withPayload("\"\xe2\x82\""), envelope.Limits{}, "payload"},
		{"invalid UTF-8 outside strings", withPayload("[1,\xff]"), envelope.Limits{}, "payload"},
		{"invalid UTF-8 in key", strings.Replace(goodMsg, `"payload"`, "\"pay\xffload\"", 1), envelope.Limits{}, ""},
		{"raw control char in string", withPayload("\"a\tb\""), envelope.Limits{}, "payload"},
		{"bad escape", withPayload(`"\x41"`), envelope.Limits{}, "payload"},
		{"short unicode escape", withPayload(`"\u12"`), envelope.Limits{}, "payload"},
		{"payload missing", goodHead + `"payload":` + goodTail, envelope.Limits{}, "payload"},
		{"payload trailing comma", withPayload(`{"a":1,}`), envelope.Limits{}, "payload"},
		{"payload NaN", withPayload(`NaN`), envelope.Limits{}, "payload"},
		{"payload leading zero", withPayload(`01`), envelope.Limits{}, "payload"},
		{"payload bare minus", withPayload(`-`), envelope.Limits{}, "payload"},
		{"payload bad fraction", withPayload(`1.`), envelope.Limits{}, "payload"},
		{"payload bad exponent", withPayload(`1e+`), envelope.Limits{}, "payload"},
		{"payload bad literal", withPayload(`tru`), envelope.Limits{}, "payload"},
		{"payload unclosed array", withPayload(`[1,2`), envelope.Limits{}, "payload"},
		{"payload non-string key", withPayload(`{1:2}`), envelope.Limits{}, "payload"},
		{"payload too deep by default", withPayload(nested(envelope.DefaultMaxDepth)), envelope.Limits{}, "payload"},
		{"payload too deep for limit 2", withPayload(`{"a":[]}`), envelope.Limits{MaxDepth: 2}, "payload"},
		{"container payload at limit 1", withPayload(`[]`), envelope.Limits{MaxDepth: 1}, "payload"},
		{"one byte over default size", msgOfSize(envelope.DefaultMaxBytes + 1), envelope.Limits{}, ""},
		{"one byte over size 300", msgOfSize(301), envelope.Limits{MaxBytes: 300}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := envelope.Parse([]byte(tc.msg), tc.lim)
			var pe *envelope.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse = %v, want a *ParseError", err)
			}
			if pe.Field != tc.field {
				t.Errorf("Field = %q, want %q (error %q)", pe.Field, tc.field, pe.Error())
			}
			if pe.Error() == "" || strings.ContainsAny(pe.Error(), "\n") {
				t.Errorf("Error() = %q, want one non-empty line", pe.Error())
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	id64 := strings.Repeat("d", 64)
	tests := []struct {
		name    string
		msg     string
		lim     envelope.Limits
		payload string // expected Payload; "" to skip the comparison
	}{
		{"contract example", goodMsg, envelope.Limits{}, `{"temperature":22.5}`},
		{"device_id 64 chars", strings.Replace(goodMsg, "sensor_001", id64, 1), envelope.Limits{}, ""},
		{"device_id all classes", strings.Replace(goodMsg, "sensor_001", "Az09_.-", 1), envelope.Limits{}, ""},
		{"timestamp zero", withTimestamp("0"), envelope.Limits{}, ""},
		{"timestamp 12 digits", withTimestamp("999999999999"), envelope.Limits{}, ""},
		{"whitespace everywhere", " \t\r\n{ \"device_id\" : \"sensor_001\" ,\n\"timestamp\"\t:\t1727712000 , \"message_id\":\"550e8400-e29b-41d4-a716-446655440000\", \"payload\" :  [ 1 , 2 ]  ,\"signature\":\"" + goodSig + "\" } \n", envelope.Limits{}, `[ 1 , 2 ]`},
		{"device_id inner and trailing dots", strings.Replace(goodMsg, "sensor_001", "a..b.", 1), envelope.Limits{}, ""},
		{"payload key with escapes", withPayload(`{"k\u00fc\n":1}`), envelope.Limits{}, `{"k\u00fc\n":1}`},
		{"payload surrogate pair, upper hex", withPayload(`"\uD83D\uDE00"`), envelope.Limits{}, `"\uD83D\uDE00"`},
		{"payload string with escapes", withPayload(`"a\"b\\c\/d\b\f\n\r\t\u00fc\ud83d\ude00"`), envelope.Limits{}, `"a\"b\\c\/d\b\f\n\r\t\u00fc\ud83d\ude00"`},
		{"payload raw unicode", withPayload(`"Zürich 温度 😀"`), envelope.Limits{}, `"Zürich 温度 😀"`},
		{"payload U+FFFD encoded", withPayload("\"\xef\xbf\xbd\""), envelope.Limits{}, "\"\xef\xbf\xbd\""},
		{"payload numbers", withPayload(`[0,-0,1.5,-2e10,3E-2,4e+1]`), envelope.Limits{}, `[0,-0,1.5,-2e10,3E-2,4e+1]`},
		{"payload literals", withPayload(`[true,false,null]`), envelope.Limits{}, ""},
		{"payload null", withPayload(`null`), envelope.Limits{}, `null`},
		{"payload number", withPayload(`42`), envelope.Limits{}, `42`},
		{"payload nested at default limit", withPayload(nested(envelope.DefaultMaxDepth - 1)), envelope.Limits{}, ""},
		{"payload object at limit 2", withPayload(`{"a":1}`), envelope.Limits{MaxDepth: 2}, ""},
		{"scalar payload at limit 1", withPayload(`1`), envelope.Limits{MaxDepth: 1}, ""},
		{"exactly default size", msgOfSize(envelope.DefaultMaxBytes), envelope.Limits{}, ""},
		{"exactly size 300", msgOfSize(300), envelope.Limits{MaxBytes: 300}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw := []byte(tc.msg)
			e, err := envelope.Parse(raw, tc.lim)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if tc.payload != "" && string(e.Payload) != tc.payload {
				t.Errorf("Payload = %q, want %q", e.Payload, tc.payload)
			}
			if !aliases(raw, e.Payload) {
				t.Error("Payload is not a sub-slice of the input")
			}
		})
	}
}

// aliases reports whether sub is a sub-slice of whole (sharing its backing
// array up to the end, as slicing without a capacity limit does).
func aliases(whole, sub []byte) bool {
	if len(sub) == 0 {
		return false
	}
	off := cap(whole) - cap(sub)
	return off >= 0 && off+len(sub) <= len(whole) && &whole[off] == &sub[0]
}

func TestParseFields(t *testing.T) {
	raw := []byte(withPayload(" { \"t\" : 1 } "))
	e, err := envelope.Parse(raw, envelope.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	sig, _ := hexDecode(goodSig)
	want := envelope.Envelope{
		DeviceID:     "sensor_001",
		Timestamp:    1727712000,
		TimestampRaw: []byte("1727712000"),
		MessageID:    []byte("550e8400-e29b-41d4-a716-446655440000"),
		Payload:      []byte(`{ "t" : 1 }`),
		Signature:    sig,
	}
	if e.DeviceID != want.DeviceID || e.Timestamp != want.Timestamp || !bytes.Equal(e.TimestampRaw, want.TimestampRaw) ||
		!bytes.Equal(e.MessageID, want.MessageID) || !bytes.Equal(e.Payload, want.Payload) || e.Signature != want.Signature {
		t.Fatalf("Parse = %+v\nwant %+v", e, want)
	}
	wantUUID := [16]byte{0x55, 0x0e, 0x84, 0x00, 0xe2, 0x9b, 0x41, 0xd4, 0xa7, 0x16, 0x44, 0x66, 0x55, 0x44, 0x00, 0x00}
	if e.UUID() != wantUUID {
		t.Errorf("UUID = %x, want %x", e.UUID(), wantUUID)
	}
}

func TestParseErrorText(t *testing.T) {
	tests := []struct {
		err  envelope.ParseError
		want string
	}{
		{envelope.ParseError{Field: "timestamp", Msg: "leading zero", Offset: 40}, "timestamp: leading zero"},
		{envelope.ParseError{Msg: "unknown field", Offset: 7}, "unknown field at byte 7"},
	}
	for _, tc := range tests {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

// TestParseErrorNeverQuotesPayload guards the log-safety promise.
func TestParseErrorNeverQuotesPayload(t *testing.T) {
	for _, p := range []string{`"SECRET-PAYLOAD`, `{"SECRET-PAYLOAD":}`, `[SECRET-PAYLOAD]`} {
		_, err := envelope.Parse([]byte(withPayload(p)), envelope.Limits{})
		if err == nil || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("Parse(%s) error = %v", p, err)
		}
	}
}

// TestParseKeepsMessageIDPastABadTimestamp (issue 16, item 15): a
// millisecond timestamp (13 digits) or one with a leading zero is
// malformed, but it is a whole number token, so Parse reads on: the
// message_id after it is still returned with the error, and the
// rejection notice can carry it in in_reply_to instead of null. A later
// syntax error does not hide the timestamp's; a bad message_id stays nil.
func TestParseKeepsMessageIDPastABadTimestamp(t *testing.T) {
	const id = "550e8400-e29b-41d4-a716-446655440000"
	tests := []struct {
		name, raw, field, msg, id string
	}{
		{"milliseconds", withTimestamp("1727712000123"), "timestamp", "out of range", id},
		{"leading zero", withTimestamp("01727712000"), "timestamp", "leading zero", id},
		{"milliseconds, then a syntax error", strings.Replace(withTimestamp("1727712000123"), `"payload":`, `"payload"`, 1), "timestamp", "out of range", id},
		{"milliseconds, bad message_id", strings.Replace(withTimestamp("1727712000123"), id, "not-a-uuid", 1), "timestamp", "out of range", ""},
		{"a fraction stops the parse", withTimestamp("1727712000.5"), "timestamp", "unsigned integer", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := envelope.Parse([]byte(tc.raw), envelope.Limits{})
			var pe *envelope.ParseError
			if !errors.As(err, &pe) || pe.Field != tc.field || !strings.Contains(pe.Msg, tc.msg) {
				t.Fatalf("err = %v, want a %s error %q", err, tc.field, tc.msg)
			}
			if string(e.MessageID) != tc.id {
				t.Errorf("MessageID = %q, want %q", e.MessageID, tc.id)
			}
		})
	}
}
