package envelope_test

import (
	"encoding/json"
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
		{"invalid UTF-8 text", 200, "caf\xff", `{"in_reply_to":"` + uplinkID + `","status":200,"body":"caf\ufffd"}`},
		{"json with invalid UTF-8 is text", 200, "\"caf\xff\"", `{"in_reply_to":"` + uplinkID + `","status":200,"body":"\"caf\ufffd\""}`},
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
