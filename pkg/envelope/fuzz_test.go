package envelope_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// FuzzParse checks that Parse never panics, that every error is a
// *ParseError, and that whatever it accepts encoding/json also reads as the
// same five fields (a timestamp or a counter), with the payload a
// sub-slice of the input.
func FuzzParse(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add(v.raw(f))
	}
	f.Add([]byte(withPayload(nested(40))))
	f.Add([]byte(withPayload(`"\ud800"`)))
	f.Add([]byte(withPayload(`"\ud83d\ude00\u0000"`)))
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := envelope.Parse(raw, envelope.Limits{})
		if err != nil {
			var pe *envelope.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T %v is not a *ParseError", err, err)
			}
			return
		}
		if !utf8.Valid(raw) || !json.Valid(raw) {
			t.Fatalf("accepted input that is not valid UTF-8 JSON: %q", raw)
		}
		if !aliases(raw, e.Payload) || !json.Valid(e.Payload) {
			t.Fatalf("payload %q is not a valid JSON sub-slice of the input", e.Payload)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("encoding/json rejects an accepted message: %v", err)
		}
		if len(m) != 5 {
			t.Fatalf("encoding/json sees %d fields", len(m))
		}
		var id, mid, sig string
		if json.Unmarshal(m["device_id"], &id) != nil || id != e.DeviceID || !envelope.ValidDeviceID(id) {
			t.Fatalf("device_id: encoding/json %q, Parse %q", id, e.DeviceID)
		}
		if json.Unmarshal(m["message_id"], &mid) != nil || mid != string(e.MessageID) || !envelope.ValidMessageID(e.MessageID) {
			t.Fatalf("message_id: encoding/json %q, Parse %q", mid, e.MessageID)
		}
		if json.Unmarshal(m["signature"], &sig) != nil || sig != hex.EncodeToString(e.Signature[:]) {
			t.Fatalf("signature: encoding/json %q, Parse %x", sig, e.Signature)
		}
		switch {
		case e.IsCounter():
			if m["timestamp"] != nil || e.TimestampRaw != nil || !bytes.Equal(m["counter"], e.CounterRaw) || strconv.FormatInt(e.Counter, 10) != string(e.CounterRaw) {
				t.Fatalf("counter: encoding/json %s (timestamp %s), Parse %s / %d", m["counter"], m["timestamp"], e.CounterRaw, e.Counter)
			}
		case m["counter"] != nil || !bytes.Equal(m["timestamp"], e.TimestampRaw) || strconv.FormatInt(e.Timestamp, 10) != string(e.TimestampRaw):
			t.Fatalf("timestamp: encoding/json %s (counter %s), Parse %s / %d", m["timestamp"], m["counter"], e.TimestampRaw, e.Timestamp)
		}
		if !bytes.Equal(m["payload"], e.Payload) {
			t.Fatalf("payload: encoding/json %q, Parse %q", m["payload"], e.Payload)
		}
		// Re-emitting the envelope gives a message that parses to the same fields.
		again, err := envelope.Parse(envelope.AppendJSON(nil, &e), envelope.Limits{MaxBytes: 2 * len(raw)})
		if err != nil || again.DeviceID != e.DeviceID || !bytes.Equal(again.Payload, e.Payload) ||
			!bytes.Equal(again.MessageID, e.MessageID) || again.Timestamp != e.Timestamp || again.Counter != e.Counter ||
			again.IsCounter() != e.IsCounter() || again.Signature != e.Signature {
			t.Fatalf("AppendJSON round trip: %v", err)
		}
	})
}
