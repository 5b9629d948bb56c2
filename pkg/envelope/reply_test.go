package envelope_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/envelope"
)

const uplinkID = "550e8400-e29b-41d4-a716-446655440000"

func TestReplyPayload(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"json object", 200, `{"ok":true}`, `{"in_reply_to":"` + uplinkID + `","status":200,"body":{"ok":true}}`},
		{"json kept verbatim", 201, `{ "b" : 1, "a" : [ 2 ] }`, `{"in_reply_to":"` + uplinkID + `","status":201,"body":{ "b" : 1, "a" : [ 2 ] }}`},
		{"surrounding whitespace trimmed", 200, " \n[1,2]\r\n", `{"in_reply_to":"` + uplinkID + `","status":200,"body":[1,2]}`},
		{"json number", 200, `42`, `{"in_reply_to":"` + uplinkID + `","status":200,"body":42}`},
		{"json null", 200, `null`, `{"in_reply_to":"` + uplinkID + `","status":200,"body":null}`},
		{"json string", 200, `"ok"`, `{"in_reply_to":"` + uplinkID + `","status":200,"body":"ok"}`},
		{"plain text", 500, `internal error`, `{"in_reply_to":"` + uplinkID + `","status":500,"body":"internal error"}`},
		{"text with quotes and newline", 400, "bad \"x\"\n", `{"in_reply_to":"` + uplinkID + `","status":400,"body":"bad \"x\"\n"}`},
		{"empty body", 204, ``, `{"in_reply_to":"` + uplinkID + `","status":204,"body":""}`},
		{"whitespace body", 204, "  ", `{"in_reply_to":"` + uplinkID + `","status":204,"body":"  "}`},
		{"truncated json is text", 502, `{"ok":`, `{"in_reply_to":"` + uplinkID + `","status":502,"body":"{\"ok\":"}`},
		{"invalid UTF-8 text", 200, "caf\xff", `{"in_reply_to":"` + uplinkID + `","status":200,"body":"caf` + "\uFFFD" + `"}`},
		{"json with a lone surrogate is text", 200, `{"a":"\ud800"}`, `{"in_reply_to":"` + uplinkID + `","status":200,"body":"{\"a\":\"\\ud800\"}"}`},
		{"json with a surrogate pair is kept", 200, `{"a":"\ud83d\ude00"}`, `{"in_reply_to":"` + uplinkID + `","status":200,"body":{"a":"\ud83d\ude00"}}`},
		{"json with invalid UTF-8 is text", 200, "\"caf\xff\"", `{"in_reply_to":"` + uplinkID + `","status":200,"body":"\"caf` + "\uFFFD" + `\""}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := envelope.ReplyPayload([]byte(uplinkID), tc.status, []byte(tc.body))
			if string(got) != tc.want {
				t.Fatalf("ReplyPayload = %s\nwant %s", got, tc.want)
			}
			assertDeliverable(t, got)
		})
	}
}

func TestRejectionPayload(t *testing.T) {
	tests := []struct {
		name      string
		inReplyTo []byte
		reason    string
		want      string
	}{
		{"with id", []byte(uplinkID), "bad_signature", `{"in_reply_to":"` + uplinkID + `","error":"bad_signature"}`},
		{"no id", nil, "malformed", `{"in_reply_to":null,"error":"malformed"}`},
		{"every reason is a plain string", []byte(uplinkID), "identity_mismatch", `{"in_reply_to":"` + uplinkID + `","error":"identity_mismatch"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := envelope.RejectionPayload(tc.inReplyTo, tc.reason)
			if string(got) != tc.want {
				t.Fatalf("RejectionPayload = %s\nwant %s", got, tc.want)
			}
			assertDeliverable(t, got)
		})
	}
}

// assertDeliverable checks that payload is valid JSON and that a reply
// envelope carrying it passes the same strict parser devices are told to
// mirror, and verifies.
func assertDeliverable(t *testing.T, payload []byte) {
	t.Helper()
	if !json.Valid(payload) {
		t.Fatalf("payload is not valid JSON: %s", payload)
	}
	e := envelope.New([]byte(secret), "sensor_001", 1727712000, "6f1c2a8e-3b4d-4c5e-9f60-718293a4b5c6", payload)
	got, err := envelope.Parse(envelope.AppendJSON(nil, &e), envelope.Limits{})
	if err != nil {
		t.Fatalf("reply envelope does not parse: %v", err)
	}
	if !envelope.Verify(envelope.NewMAC([]byte(secret)), &got) {
		t.Fatal("reply envelope does not verify")
	}
}

// TestReplyPayloadBounded is finding 6 of issue 9: whatever the backend
// answers, the reply envelope (longest device id, 12-digit timestamp) fits
// in DefaultMaxBytes, so it parses on the device and stays below the
// broker's max_packet_size. A body that does not fit is cut at a rune
// boundary, as a JSON string, and marked "truncated":true.
func TestReplyPayloadBounded(t *testing.T) {
	id64 := strings.Repeat("d", envelope.MaxDeviceIDLen)
	wrap := func(payload []byte) []byte {
		e := envelope.New([]byte(secret), id64, 999_999_999_999, "6f1c2a8e-3b4d-4c5e-9f60-718293a4b5c6", payload)
		return envelope.AppendJSON(nil, &e)
	}
	// room is the longest body of plain letters that still fits.
	room := envelope.DefaultMaxBytes - len(wrap(envelope.ReplyPayload([]byte(uplinkID), 200, nil)))
	tests := []struct {
		name      string
		body      string
		truncated bool
		text      string // the decoded body string must be a prefix of this; "" for a JSON body
	}{
		{"16 KiB of <", strings.Repeat("<", 16<<10), false, strings.Repeat("<", 16<<10)},
		{"60 KiB of <", strings.Repeat("<", 60<<10), false, strings.Repeat("<", 60<<10)},
		{"1 MiB of <", strings.Repeat("<", 1<<20), true, strings.Repeat("<", 1<<20)},
		{"64 KiB of invalid bytes", strings.Repeat("\xff", 64<<10), true, strings.Repeat("\ufffd", 64<<10)},
		{"16 KiB of invalid bytes", strings.Repeat("\xfe", 16<<10), false, strings.Repeat("\ufffd", 16<<10)},
		{"64 KiB of control chars", strings.Repeat("\x01", 64<<10), true, strings.Repeat("\x01", 64<<10)},
		{"64 KiB of quotes", strings.Repeat(`"`, 64<<10), true, strings.Repeat(`"`, 64<<10)},
		{"64 KiB of backslashes", strings.Repeat(`\`, 64<<10), true, strings.Repeat(`\`, 64<<10)},
		{"64 KiB of newlines", strings.Repeat("\n", 64<<10), true, strings.Repeat("\n", 64<<10)},
		{"64 KiB of 4-byte runes", strings.Repeat("😀", 16<<10), true, strings.Repeat("😀", 16<<10)},
		{"mixed 3-byte runes", strings.Repeat("温<\x00", 30<<10), true, strings.Repeat("温<\x00", 30<<10)},
		{"large valid JSON", `[` + strings.Repeat(`"aaaaaaaa",`, 10<<10) + `1]`, true, `[` + strings.Repeat(`"aaaaaaaa",`, 10<<10) + `1]`},
		{"exactly room letters", strings.Repeat("a", room), false, strings.Repeat("a", room)},
		{"one letter too many", strings.Repeat("a", room+1), true, strings.Repeat("a", room+1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			payload := envelope.ReplyPayload([]byte(uplinkID), 200, []byte(tc.body))
			raw := wrap(payload)
			if len(raw) > envelope.DefaultMaxBytes {
				t.Fatalf("reply envelope is %d bytes, over %d", len(raw), envelope.DefaultMaxBytes)
			}
			if _, err := envelope.Parse(raw, envelope.Limits{}); err != nil {
				t.Fatalf("reply does not parse with the default limits: %v", err)
			}
			var p struct {
				InReplyTo string          `json:"in_reply_to"`
				Status    int             `json:"status"`
				Body      json.RawMessage `json:"body"`
				Truncated bool            `json:"truncated"`
			}
			dec := json.NewDecoder(bytes.NewReader(payload))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&p); err != nil {
				t.Fatalf("payload: %v", err)
			}
			if p.InReplyTo != uplinkID || p.Status != 200 || p.Truncated != tc.truncated {
				t.Fatalf("in_reply_to %q status %d truncated %v, want truncated %v", p.InReplyTo, p.Status, p.Truncated, tc.truncated)
			}
			var s string
			if err := json.Unmarshal(p.Body, &s); err != nil {
				t.Fatalf("body is not a JSON string: %v", err)
			}
			if !strings.HasPrefix(tc.text, s) {
				t.Fatalf("body (%d bytes) is not a prefix of the answer's text", len(s))
			}
			if tc.truncated && len(payload) < envelope.MaxReplyPayloadBytes-16 {
				t.Fatalf("truncated payload is only %d bytes of %d", len(payload), envelope.MaxReplyPayloadBytes)
			}
			if !tc.truncated && s != tc.text {
				t.Fatalf("body shortened to %d bytes without the marker", len(s))
			}
		})
	}
}

// TestMaxReplyBytesFitsBroker ties MaxReplyBytes to the shipped broker
// config: the largest reply, with the longest response topic and the MQTT
// header, is within max_packet_size, and its payload within
// message_size_limit.
func TestMaxReplyBytesFitsBroker(t *testing.T) {
	b, err := os.ReadFile("../../mosquitto/mosquitto.conf")
	if err != nil {
		t.Fatal(err)
	}
	limits := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && (f[0] == "max_packet_size" || f[0] == "message_size_limit") {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			limits[f[0]] = n
		}
	}
	topic := len("device/" + strings.Repeat("d", envelope.MaxDeviceIDLen) + "/response")
	packet := 5 + 2 + topic + 2 + envelope.MaxReplyBytes // fixed header, topic length, topic, packet id, payload
	if max, ok := limits["max_packet_size"]; !ok || packet > max {
		t.Fatalf("largest reply packet %d bytes, max_packet_size %d (set: %v)", packet, max, ok)
	}
	if max, ok := limits["message_size_limit"]; ok && envelope.MaxReplyBytes > max {
		t.Fatalf("largest reply %d bytes, message_size_limit %d", envelope.MaxReplyBytes, max)
	}
}
