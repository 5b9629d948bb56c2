package validate_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the generator in this file")

const vectorsPath = "../../testdata/vectors.json"

// vectorFile is the layout of testdata/vectors.json. The file, not the
// generator below, is the source of truth: tests read it, and -update only
// rewrites it when the generator changed on purpose.
type vectorFile struct {
	About   []string      `json:"about"`
	Vectors []vector      `json:"vectors"`
	Replies []replyVector `json:"replies"`
	// CounterVectors, TimeRequests and TimeReplies: counter mode and
	// signed time (docs/PROTOCOL.md, sections 1b and 4c);
	// vectors_counter_test.go generates and checks them.
	CounterVectors []counterVector     `json:"counter_vectors"`
	TimeRequests   []timeRequestVector `json:"time_requests"`
	TimeReplies    []timeReplyVector   `json:"time_replies"`
}

// replyVector is one signed downlink (reply or notice) as the gateway
// publishes it; docs/PROTOCOL.md describes every field.
type replyVector struct {
	Name        string `json:"name"`
	Note        string `json:"note,omitempty"`
	Secret      string `json:"secret"`
	DownlinkKey string `json:"downlink_key"`
	Now         int64  `json:"now"`
	Message     string `json:"message"`
	Signature   string `json:"signature"`
}

// vector is one golden vector; docs/PROTOCOL.md describes every field.
type vector struct {
	Name            string  `json:"name"`
	Note            string  `json:"note,omitempty"`
	Secret          string  `json:"secret"`
	TopicDevice     string  `json:"topic_device"`
	DeviceState     string  `json:"device_state"`
	Now             int64   `json:"now"`
	MaxMessageBytes int     `json:"max_message_bytes,omitempty"`
	MaxDepth        int     `json:"max_depth,omitempty"`
	PrecededBy      string  `json:"preceded_by,omitempty"`
	Message         *string `json:"message,omitempty"` // nil when message_base64 is set
	MessageBase64   string  `json:"message_base64,omitempty"`
	Expected        string  `json:"expected"`
	Signature       string  `json:"signature,omitempty"`
}

func (v vector) raw(t testing.TB) []byte {
	if v.Message != nil {
		return []byte(*v.Message)
	}
	b, err := base64.StdEncoding.DecodeString(v.MessageBase64)
	if err != nil {
		t.Fatalf("%s: message_base64: %v", v.Name, err)
	}
	return b
}

func loadVectors(t testing.TB) []vector { return loadVectorFile(t).Vectors }

func loadVectorFile(t testing.TB) vectorFile {
	t.Helper()
	b, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	var f vectorFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("decode vectors: %v", err)
	}
	return f
}

// fakeKeys is a KeyStore over a map.
type fakeKeys map[string]validate.Device

func (k fakeKeys) Device(_ context.Context, id string) (validate.Device, error) {
	d, ok := k[id]
	if !ok {
		return validate.Device{}, validate.ErrUnknownDevice
	}
	return d, nil
}

// checkVector runs v through a fresh validator with the real replay.Memory
// and returns the verdict: "accepted" or a reason code.
func checkVector(t testing.TB, v vector) string {
	t.Helper()
	cfg := validate.DefaultConfig()
	if v.MaxMessageBytes > 0 {
		cfg.MaxMessageBytes = v.MaxMessageBytes
	}
	if v.MaxDepth > 0 {
		cfg.MaxDepth = v.MaxDepth
	}
	keys := fakeKeys{}
	switch v.DeviceState {
	case "enabled", "disabled":
		keys[v.TopicDevice] = validate.Device{Secret: []byte(v.Secret), Enabled: v.DeviceState == "enabled"}
	case "unregistered":
	default:
		t.Fatalf("%s: device_state %q", v.Name, v.DeviceState)
	}
	now := func() time.Time { return time.Unix(v.Now, 0) }
	val, err := validate.New(cfg, keys, replay.NewMemory(0, now), now)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if v.PrecededBy != "" {
		if _, err := val.Check(ctx, v.TopicDevice, []byte(v.PrecededBy)); err != nil {
			t.Fatalf("%s: preceded_by: %v", v.Name, err)
		}
	}
	res, err := val.Check(ctx, v.TopicDevice, v.raw(t))
	if err != nil {
		t.Fatalf("%s: Check: %v", v.Name, err)
	}
	if res.Accepted() {
		return "accepted"
	}
	return string(res.Rejection.Reason)
}

func TestVectors(t *testing.T) {
	if *update {
		writeVectors(t)
	}
	vs := loadVectors(t)
	seen := map[string]bool{}
	names := map[string]bool{}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			if names[v.Name] {
				t.Fatalf("duplicate vector name")
			}
			names[v.Name] = true
			if got := checkVector(t, v); got != v.Expected {
				t.Fatalf("verdict = %s, want %s", got, v.Expected)
			}
			seen[v.Expected] = true
			if v.Expected == "malformed" {
				return
			}
			if v.Signature == "" {
				t.Fatal("a well-formed vector must carry its expected signature")
			}
			env, err := envelope.Parse(v.raw(t), envelope.Limits{MaxBytes: v.MaxMessageBytes, MaxDepth: v.MaxDepth})
			if err != nil {
				t.Fatal(err)
			}
			sig := envelope.Sign([]byte(v.Secret), &env)
			if got := hex.EncodeToString(sig[:]); got != v.Signature {
				t.Fatalf("signature = %s, want %s", got, v.Signature)
			}
			sent := hex.EncodeToString(env.Signature[:])
			switch v.Expected {
			case "accepted", string(validate.Replay):
				if sent != v.Signature {
					t.Fatalf("verdict %s but the message carries %s, not %s", v.Expected, sent, v.Signature)
				}
			case string(validate.BadSignature):
				if sent == v.Signature {
					t.Fatal("verdict bad_signature but the message carries the right signature")
				}
			}
		})
	}
	for _, want := range append([]validate.Reason{"accepted"}, validate.Reasons...) {
		if want == validate.RateLimited {
			continue // a verdict on the device's rate, not on the bytes: no vector (see limit_test.go)
		}
		if want == validate.KeyUnavailable {
			continue // a verdict on the gateway's registry, not on the bytes (TestCheck, pkg/registry)
		}
		if want == validate.QuotaExceeded {
			continue // a capacity verdict: it depends on the store, not on the message (TestCheckReplayFullWithMemory)
		}
		if !seen[string(want)] {
			t.Errorf("no vector expects %s", want)
		}
	}
}

// The generator. Each spec is built into a message signed over the tokens
// it sends (or over signedPayload/signedTS when the point is tampering),
// checked against the validator, and written out.

const (
	defSecret  = "a17513da805d98386da054eb4bcd037332257d556e379992293333e283e52a17"
	defDevice  = "sensor_001"
	defTS      = "1727712000"
	defMID     = "550e8400-e29b-41d4-a716-446655440000"
	defPayload = `{"temperature":22.5}`
	compact    = `{"device_id":"{device}","timestamp":{ts},"message_id":"{mid}","payload":{payload},"signature":"{sig}"}`
	otherKey   = "0000000000000000-not-the-registered-secret"
	uppercase  = "550E8400-E29B-41D4-A716-446655440000"
)

type vecSpec struct {
	name, note, want string
	secret           string // registered secret; defSecret when empty
	signKey          string // key that signed the message; secret when empty
	topic            string // topic device; device when empty
	state            string // "enabled" when empty
	nowDelta         int64  // now - the default timestamp, in seconds
	device, ts, mid  string
	payload          string
	signedPayload    string // payload that was signed, when not the one sent
	signedTS         string // timestamp that was signed, when not the one sent
	tmpl             string // layout; compact when empty
	sig              func(string) string
	after            func(string) string // edits the finished message
	padTo            int                 // pads the payload's "pad" member to reach this many bytes
	maxBytes         int
	maxDepth         int
	earlier          *vecSpec // a message checked first, verdict ignored
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (s vecSpec) build() string {
	device, ts, mid, payload := or(s.device, defDevice), or(s.ts, defTS), or(s.mid, defMID), or(s.payload, defPayload)
	if s.padTo > 0 {
		base := s
		base.padTo = 0
		n := s.padTo - len(base.build())
		base.payload = strings.Replace(payload, `"pad":""`, `"pad":"`+strings.Repeat("x", n)+`"`, 1)
		return base.build()
	}
	mac := hmac.New(sha256.New, []byte(or(s.signKey, or(s.secret, defSecret))))
	mac.Write([]byte(device + "\n" + or(s.signedTS, ts) + "\n" + mid + "\n" + or(s.signedPayload, payload)))
	sig := hex.EncodeToString(mac.Sum(nil))
	if s.sig != nil {
		sig = s.sig(sig)
	}
	msg := strings.NewReplacer("{device}", device, "{ts}", ts, "{mid}", mid, "{payload}", payload, "{sig}", sig).
		Replace(or(s.tmpl, compact))
	if s.after != nil {
		msg = s.after(msg)
	}
	return msg
}

func nested(n int) string { return strings.Repeat("[", n) + "1" + strings.Repeat("]", n) }

func specs() []vecSpec {
	id64 := strings.Repeat("a.b-c_9", 9) + "Z"
	return []vecSpec{
		// accepted
		{name: "accepted_basic", want: "accepted", note: "The example message of the contract."},
		{name: "accepted_whitespace_between_fields", want: "accepted", note: "Whitespace outside the payload value is not signed.",
			tmpl: "{\n  \"device_id\" : \"{device}\",\n  \"timestamp\" : {ts},\n  \"message_id\" : \"{mid}\",\n  \"payload\" : {payload} ,\n  \"signature\" : \"{sig}\"\n}\n"},
		{name: "accepted_whitespace_inside_payload", want: "accepted", note: "Whitespace inside the payload is signed exactly as sent.",
			payload: "{ \"temperature\" : 22.5,\n  \"humidity\" : 60 }"},
		{name: "accepted_any_field_order", want: "accepted", note: "Fields may come in any order; the signing bytes do not depend on it.",
			tmpl: `{"signature":"{sig}","payload":{payload},"message_id":"{mid}","timestamp":{ts},"device_id":"{device}"}`},
		{name: "accepted_unicode_payload", want: "accepted", note: "Non-ASCII UTF-8 in the payload is signed as its raw UTF-8 bytes.",
			mid: "6f1c2a8e-3b4d-4c5e-9f60-718293a4b5c6", payload: `{"city":"Zürich","note":"温度 ✓ 😀"}`},
		{name: "accepted_escaped_payload", want: "accepted", note: "Escapes in the payload are signed as sent, not decoded.",
			mid: "6f1c2a8e-3b4d-4c5e-9f60-718293a4b5c7", payload: `{"city":"Z\u00fcrich","face":"\ud83d\ude00","quote":"say \"hi\"\n","path":"a\/b"}`},
		{name: "accepted_payload_array", want: "accepted", payload: `[21.5,22,22.5]`},
		{name: "accepted_payload_string", want: "accepted", payload: `"door opened"`},
		{name: "accepted_payload_number", want: "accepted", payload: `-12.5e-3`},
		{name: "accepted_payload_null", want: "accepted", payload: `null`},
		{name: "accepted_payload_true", want: "accepted", payload: `true`},
		{name: "accepted_payload_empty_object", want: "accepted", payload: `{}`},
		{name: "accepted_skew_at_limit_past", want: "accepted", note: "now - timestamp = 300 s = max_clock_skew: inclusive.", nowDelta: 300},
		{name: "accepted_skew_at_limit_future", want: "accepted", note: "timestamp - now = 300 s = max_clock_skew: inclusive.", nowDelta: -300},
		{name: "accepted_unicode_secret", want: "accepted", note: "The HMAC key is the UTF-8 bytes of the secret string.",
			secret: "pässwörd-für-sensor_001-✓"},
		{name: "accepted_device_id_64_chars", want: "accepted", device: id64},
		{name: "accepted_device_id_inner_dots", want: "accepted", note: "Dots are allowed anywhere but first.", device: "a..b."},
		{name: "accepted_depth_at_limit", want: "accepted", note: "Envelope depth 1 + 31 nested arrays = depth 32, the default limit.",
			payload: nested(31)},
		{name: "accepted_size_at_limit", want: "accepted", note: "Exactly max_message_bytes (256 here) bytes.",
			payload: `{"pad":""}`, padTo: 256, maxBytes: 256},
		{name: "accepted_after_rejected_forgery", want: "accepted", note: "A rejected message does not consume its message_id.",
			earlier: &vecSpec{signKey: otherKey}},

		// malformed
		{name: "malformed_unknown_field", want: "malformed", after: func(m string) string { return strings.TrimSuffix(m, "}") + `,"extra":1}` }},
		{name: "malformed_unknown_field_case", want: "malformed", note: "Keys are case-sensitive.",
			tmpl: `{"Device_ID":"{device}","timestamp":{ts},"message_id":"{mid}","payload":{payload},"signature":"{sig}"}`},
		{name: "malformed_missing_signature", want: "malformed",
			tmpl: `{"device_id":"{device}","timestamp":{ts},"message_id":"{mid}","payload":{payload}}`},
		{name: "malformed_missing_payload", want: "malformed",
			tmpl: `{"device_id":"{device}","timestamp":{ts},"message_id":"{mid}","signature":"{sig}"}`},
		{name: "malformed_duplicate_payload", want: "malformed", note: "A parser keeping the last duplicate would forward an unsigned payload.",
			tmpl: `{"device_id":"{device}","timestamp":{ts},"message_id":"{mid}","payload":{payload},"payload":{"temperature":99.9},"signature":"{sig}"}`},
		{name: "malformed_duplicate_device_id", want: "malformed",
			tmpl: `{"device_id":"{device}","device_id":"{device}","timestamp":{ts},"message_id":"{mid}","payload":{payload},"signature":"{sig}"}`},
		{name: "malformed_invalid_utf8", want: "malformed", note: "Byte 0xff inside a payload string; the message is stored as message_base64.",
			payload: "{\"note\":\"caf\xff\"}"},
		{name: "malformed_invalid_utf8_surrogate", want: "malformed", note: "A UTF-8-encoded lone surrogate (ED A0 80) is not valid UTF-8.",
			payload: "{\"note\":\"\xed\xa0\x80\"}"},
		{name: "malformed_too_deep", want: "malformed", note: "Envelope depth 1 + 32 nested arrays = depth 33.", payload: nested(32)},
		{name: "malformed_too_large", want: "malformed", note: "max_message_bytes (256 here) + 1 bytes.",
			payload: `{"pad":""}`, padTo: 257, maxBytes: 256},
		{name: "malformed_timestamp_negative", want: "malformed", ts: "-1"},
		{name: "malformed_timestamp_fraction", want: "malformed", ts: "1.5"},
		{name: "malformed_timestamp_fraction_zero", want: "malformed", ts: "1727712000.0"},
		{name: "malformed_timestamp_exponent", want: "malformed", ts: "1e9"},
		{name: "malformed_timestamp_leading_zero", want: "malformed", ts: "017"},
		{name: "malformed_timestamp_string", want: "malformed", ts: `"1727712000"`},
		{name: "malformed_timestamp_milliseconds", want: "malformed", note: "Milliseconds instead of seconds: 13 digits.", ts: "1727712000000"},
		{name: "malformed_message_id_uppercase", want: "malformed", mid: uppercase},
		{name: "malformed_message_id_no_hyphens", want: "malformed", mid: "550e8400e29b41d4a716446655440000"},
		{name: "malformed_signature_uppercase", want: "malformed", sig: strings.ToUpper},
		{name: "malformed_signature_short", want: "malformed", sig: func(s string) string { return s[:63] }},
		{name: "malformed_device_id_65_chars", want: "malformed", device: id64 + "x"},
		{name: "malformed_device_id_bad_char", want: "malformed", device: "sensor 001", topic: defDevice},
		{name: "malformed_device_id_empty", want: "malformed", device: "", tmpl: strings.Replace(compact, "{device}", "", 1), topic: defDevice},
		{name: "malformed_trailing_data", want: "malformed", after: func(m string) string { return m + "x" }},
		{name: "malformed_two_objects", want: "malformed", after: func(m string) string { return m + m }},
		{name: "malformed_truncated", want: "malformed", after: func(m string) string { return m[:len(m)-1] }},
		{name: "malformed_byte_order_mark", want: "malformed", after: func(m string) string { return "\ufeff" + m }},
		{name: "malformed_not_an_object", want: "malformed", after: func(m string) string { return "[" + m + "]" }},
		{name: "malformed_empty", want: "malformed", after: func(string) string { return "" }},
		{name: "malformed_payload_trailing_comma", want: "malformed", payload: `{"temperature":22.5,}`},
		{name: "malformed_payload_nan", want: "malformed", payload: `{"temperature":NaN}`},
		{name: "malformed_payload_control_char", want: "malformed", note: "A raw tab inside a JSON string.", payload: "{\"note\":\"a\tb\"}"},
		{name: "malformed_escaped_member_name", want: "malformed", note: "Member names have one spelling: no escapes (device\\u005fid would verify with device_id's signature).",
			tmpl: strings.Replace(compact, `"device_id"`, `"device\u005fid"`, 1)},
		{name: "malformed_escaped_member_name_payload", want: "malformed", tmpl: strings.Replace(compact, `"payload"`, `"p\u0061yload"`, 1)},
		{name: "malformed_escaped_device_id", want: "malformed", note: "device_id has one spelling: no escapes (sensor\\u005f001 would verify with sensor_001's signature).",
			tmpl: strings.Replace(compact, `"{device}"`, `"sensor\u005f001"`, 1)},
		{name: "malformed_escaped_message_id", want: "malformed", note: "message_id has one spelling: no escapes.",
			tmpl: strings.Replace(compact, `"{mid}"`, `"550e8400\u002de29b-41d4-a716-446655440000"`, 1)},
		{name: "malformed_escaped_signature", want: "malformed", note: "signature has one spelling: no escapes.",
			sig: func(s string) string { return `\u00` + hex.EncodeToString([]byte{s[0]}) + s[1:] }},
		{name: "malformed_lone_high_surrogate", want: "malformed", note: "An escaped high surrogate with no low one after it.", payload: `{"note":"\ud800"}`},
		{name: "malformed_lone_low_surrogate", want: "malformed", note: "An escaped low surrogate with no high one before it.", payload: `{"note":"\udc00"}`},
		{name: "malformed_high_surrogate_then_non_low", want: "malformed", note: "A high surrogate followed by an escape that is not a low surrogate.", payload: `{"note":"\ud800\u0041"}`},
		{name: "malformed_high_surrogate_then_text", want: "malformed", payload: `{"note":"\ud83dx"}`},
		{name: "malformed_reversed_surrogate_pair", want: "malformed", payload: `{"note":"\ude00\ud83d"}`},
		{name: "malformed_lone_surrogate_in_payload_name", want: "malformed", payload: `{"\ud800":1}`},
		{name: "malformed_device_id_dot", want: "malformed", note: "A device id must not start with a dot: it is a path segment.", device: "."},
		{name: "malformed_device_id_dot_dot", want: "malformed", note: "'..' would make the backend URL /ingest/../ and a certificate outside devices/.", device: ".."},
		{name: "malformed_device_id_leading_dot", want: "malformed", device: ".sensor_001"},

		// identity_mismatch
		{name: "identity_mismatch_other_device", want: "identity_mismatch", topic: "sensor_002"},
		{name: "identity_mismatch_case", want: "identity_mismatch", note: "Device ids are case-sensitive.", topic: "Sensor_001"},

		// unknown_device, disabled
		{name: "unknown_device", want: "unknown_device", state: "unregistered"},
		{name: "disabled", want: "disabled", state: "disabled"},
		{name: "disabled_before_signature", want: "disabled", note: "Disabled is checked before the signature.", state: "disabled", signKey: otherKey},

		// stale
		{name: "stale_past_one_second", want: "stale", note: "now - timestamp = 301 s.", nowDelta: 301},
		{name: "stale_future_one_second", want: "stale", note: "timestamp - now = 301 s.", nowDelta: -301},
		{name: "stale_before_signature", want: "stale", note: "Freshness is checked before the signature.", nowDelta: 3600, signKey: otherKey},

		// bad_signature
		{name: "bad_signature_wrong_secret", want: "bad_signature", signKey: otherKey},
		{name: "bad_signature_tampered_payload", want: "bad_signature", payload: `{"temperature":99.9}`, signedPayload: defPayload},
		{name: "bad_signature_reserialized_payload", want: "bad_signature", note: "Signed over {\"temperature\": 22.5} (with a space) but sent re-serialized without it.",
			signedPayload: `{"temperature": 22.5}`},
		{name: "bad_signature_decoded_escape", want: "bad_signature", note: "Signed over the decoded text but sent with a \\u escape.",
			payload: `{"city":"Z\u00fcrich"}`, signedPayload: `{"city":"Zürich"}`},
		{name: "bad_signature_tampered_timestamp", want: "bad_signature", ts: "1727712001", signedTS: defTS},
		{name: "bad_signature_zeros", want: "bad_signature", sig: func(string) string { return strings.Repeat("0", 64) }},
		{name: "bad_signature_reflected_downlink", want: "bad_signature", note: "Signed with the downlink key, as a gateway reply or notice is: never valid as an uplink.",
			signKey: string(envelope.DownlinkKey([]byte(defSecret))), payload: `{"in_reply_to":null,"error":"malformed"}`},

		// replay
		{name: "replay_redelivery", want: "replay", note: "The same message a second time.", earlier: &vecSpec{}},
		{name: "replay_same_id_new_payload", want: "replay", note: "A new, correctly signed message reusing an accepted message_id.",
			payload: `{"temperature":23.0}`, nowDelta: 60, ts: "1727712060", earlier: &vecSpec{}},
	}
}

// replySpecs are the downlink vectors: payloads as the gateway builds them.
func replySpecs() []struct{ name, note, secret, mid, payload string } {
	return []struct{ name, note, secret, mid, payload string }{
		{"reply_forwarded", "The reply after a forward: the backend answered 200 {\"ok\":true}.", defSecret,
			"7d3f1c2a-8e4b-4d5c-9e6f-0a1b2c3d4e5f", string(envelope.ReplyPayload([]byte(defMID), 200, []byte(`{"ok":true}`)))},
		{"reply_text_body", "A non-JSON backend body is sent as a JSON string.", defSecret,
			"7d3f1c2a-8e4b-4d5c-9e6f-0a1b2c3d4e60", string(envelope.ReplyPayload([]byte(defMID), 503, []byte("try <later>")))},
		{"notice_malformed", "The notice after a message so malformed that no message_id was read.", defSecret,
			"7d3f1c2a-8e4b-4d5c-9e6f-0a1b2c3d4e61", string(envelope.RejectionPayload(nil, "malformed"))},
		{"notice_stale_unicode_secret", "K_down is keyed with the UTF-8 bytes of the secret string.", "pässwörd-für-sensor_001-✓",
			"7d3f1c2a-8e4b-4d5c-9e6f-0a1b2c3d4e62", string(envelope.RejectionPayload([]byte(defMID), "stale"))},
	}
}

// TestReplyVectors checks every downlink vector: K_down, the signature
// (which the message carries), and that the message, republished as an
// uplink, is a bad_signature.
func TestReplyVectors(t *testing.T) {
	f := loadVectorFile(t)
	if len(f.Replies) == 0 {
		t.Fatal("no reply vectors")
	}
	for _, r := range f.Replies {
		t.Run(r.Name, func(t *testing.T) {
			if got := string(envelope.DownlinkKey([]byte(r.Secret))); got != r.DownlinkKey {
				t.Fatalf("DownlinkKey = %s, want %s", got, r.DownlinkKey)
			}
			env, err := envelope.Parse([]byte(r.Message), envelope.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			sig := envelope.SignDownlink([]byte(r.Secret), &env)
			if got := hex.EncodeToString(sig[:]); got != r.Signature || sig != env.Signature {
				t.Fatalf("SignDownlink = %s, want %s (the message carries %x)", got, r.Signature, env.Signature)
			}
			up := vector{Name: r.Name, Secret: r.Secret, TopicDevice: env.DeviceID, DeviceState: "enabled", Now: r.Now, Message: &r.Message}
			if got := checkVector(t, up); got != string(validate.BadSignature) {
				t.Fatalf("the reply as an uplink: %s, want bad_signature", got)
			}
		})
	}
}

func writeVectors(t *testing.T) {
	base, _ := strconv.ParseInt(defTS, 10, 64)
	f := vectorFile{About: []string{
		"Golden vectors for the iotgw device contract: uplinks in \"vectors\", signed downlinks (K_down) in \"replies\",",
		"counter-mode uplinks in \"counter_vectors\", time requests and their signed answers in \"time_requests\" and \"time_replies\"; docs/PROTOCOL.md describes the fields.",
		"Shared by the Go tests, the CLI tests and scripts/check_vectors.py. This file is the source of truth;",
		"it was generated by `go test ./pkg/validate -run TestVectors -update`.",
	}}
	for _, s := range specs() {
		v := vector{
			Name: s.name, Note: s.note, Secret: or(s.secret, defSecret), TopicDevice: or(s.topic, or(s.device, defDevice)),
			DeviceState: or(s.state, "enabled"), Now: base + s.nowDelta, MaxMessageBytes: s.maxBytes, MaxDepth: s.maxDepth,
			Expected: s.want,
		}
		s.secret = v.Secret
		msg := s.build()
		if utf8.ValidString(msg) {
			v.Message = &msg
		} else {
			v.MessageBase64 = base64.StdEncoding.EncodeToString([]byte(msg))
		}
		if s.earlier != nil {
			e := *s.earlier
			e.secret = v.Secret
			v.PrecededBy = e.build()
		}
		if s.want != "malformed" {
			env, err := envelope.Parse([]byte(msg), envelope.Limits{MaxBytes: s.maxBytes, MaxDepth: s.maxDepth})
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			sig := envelope.Sign([]byte(v.Secret), &env)
			v.Signature = hex.EncodeToString(sig[:])
		}
		if got := checkVector(t, v); got != s.want {
			t.Fatalf("generator: %s: verdict %s, want %s", s.name, got, s.want)
		}
		f.Vectors = append(f.Vectors, v)
	}
	for _, r := range replySpecs() {
		e := envelope.Envelope{DeviceID: defDevice, Timestamp: base, TimestampRaw: []byte(defTS), MessageID: []byte(r.mid), Payload: []byte(r.payload)}
		e.Signature = envelope.SignDownlink([]byte(r.secret), &e)
		f.Replies = append(f.Replies, replyVector{Name: r.name, Note: r.note, Secret: r.secret,
			DownlinkKey: string(envelope.DownlinkKey([]byte(r.secret))), Now: base,
			Message: string(envelope.AppendJSON(nil, &e)), Signature: hex.EncodeToString(e.Signature[:])})
	}
	writeCounterVectors(t, &f)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(f); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vectorsPath, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "wrote %d vectors to %s\n", len(f.Vectors), vectorsPath)
}
