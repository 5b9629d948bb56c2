package validate_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

// counterVector is one counter-mode golden vector (docs/PROTOCOL.md,
// section 6): a message checked against a device registered with the
// given freshness mode whose highest accepted counter is counter_bound.
type counterVector struct {
	Name         string `json:"name"`
	Note         string `json:"note,omitempty"`
	Secret       string `json:"secret"`
	TopicDevice  string `json:"topic_device"`
	Freshness    string `json:"freshness"`
	CounterBound int64  `json:"counter_bound"`
	Now          int64  `json:"now"`
	Message      string `json:"message"`
	Expected     string `json:"expected"`
	Signature    string `json:"signature,omitempty"`
}

// timeRequestVector is one time request as a device publishes it on
// device/<id>/time; nonce is set when the request is well formed.
type timeRequestVector struct {
	Name     string `json:"name"`
	Note     string `json:"note,omitempty"`
	Message  string `json:"message"`
	Expected string `json:"expected"`
	Nonce    string `json:"nonce,omitempty"`
}

// timeReplyVector is one downlink a device that sent a time request with
// nonce may receive; time is the gateway time it carries when expected is
// "ok".
type timeReplyVector struct {
	Name        string `json:"name"`
	Note        string `json:"note,omitempty"`
	Secret      string `json:"secret"`
	DownlinkKey string `json:"downlink_key"`
	DeviceID    string `json:"device_id"`
	Nonce       string `json:"nonce"`
	Message     string `json:"message"`
	Expected    string `json:"expected"`
	Time        int64  `json:"time,omitempty"`
}

// checkCounterVector runs v through a fresh validator and then the
// commit's rule (a counter at or below the bound is a replay; the real
// rule is in each storage engine, tested there).
func checkCounterVector(t testing.TB, v counterVector) string {
	t.Helper()
	keys := fakeKeys{v.TopicDevice: {Secret: []byte(v.Secret), Enabled: true, Counter: v.Freshness == "counter"}}
	now := func() time.Time { return time.Unix(v.Now, 0) }
	val, err := validate.New(validate.DefaultConfig(), keys, replay.NewMemory(0, now), now)
	if err != nil {
		t.Fatal(err)
	}
	res, err := val.Check(context.Background(), v.TopicDevice, []byte(v.Message))
	if err != nil {
		t.Fatalf("%s: Check: %v", v.Name, err)
	}
	switch {
	case !res.Accepted():
		return string(res.Rejection.Reason)
	case res.Envelope.IsCounter() && res.Envelope.Counter <= v.CounterBound:
		return string(validate.Replay)
	}
	return "accepted"
}

const (
	ctrTmpl  = `{"device_id":"{device}","counter":{ctr},"message_id":"{mid}","payload":{payload},"signature":"{sig}"}`
	ctrNonce = "00112233445566778899aabbccddeeff"
)

type ctrSpec struct {
	name, note, want string
	freshness        string // "counter" when empty
	bound            int64
	ctr              string // "42" when empty
	signed           string // signing bytes when not the counter-mode ones of what is sent
	tmpl             string
	signKey          string
}

func (s ctrSpec) build() string {
	ctr := or(s.ctr, "42")
	signing := s.signed
	if signing == "" {
		signing = string(envelope.CounterSigningBytes(nil, defDevice, []byte(ctr), []byte(defMID), []byte(defPayload)))
	}
	mac := hmac.New(sha256.New, []byte(or(s.signKey, defSecret)))
	mac.Write([]byte(signing))
	return strings.NewReplacer("{device}", defDevice, "{ctr}", ctr, "{ts}", defTS, "{mid}", defMID, "{payload}", defPayload,
		"{sig}", hex.EncodeToString(mac.Sum(nil))).Replace(or(s.tmpl, ctrTmpl))
}

func ctrSpecs() []ctrSpec {
	timeSigning := defDevice + "\n" + defTS + "\n" + defMID + "\n" + defPayload
	return []ctrSpec{
		{name: "accepted_counter_first", want: "accepted", ctr: "1", note: "A device's first message after registration: the bound starts at 0, so any counter from 1 is accepted."},
		{name: "accepted_counter_next", want: "accepted", bound: 41, note: "One above the highest accepted counter."},
		{name: "accepted_counter_gap", want: "accepted", bound: 41, ctr: "1041", note: "A gap is fine (a device that skips ahead after a reboot): counters only have to rise."},
		{name: "accepted_counter_max", want: "accepted", bound: 41, ctr: "9223372036854775807", note: "The largest counter, 2^63-1."},
		{name: "accepted_counter_any_order", want: "accepted", tmpl: `{"signature":"{sig}","payload":{payload},"counter":{ctr},"message_id":"{mid}","device_id":"{device}"}`},
		{name: "replay_counter_equal", want: "replay", bound: 42, note: "The bound is the highest accepted counter: the same counter again (a redelivery of the last message) is a replay."},
		{name: "replay_counter_below", want: "replay", bound: 42, ctr: "7", note: "Any earlier counter, however old, is a replay."},
		{name: "replay_counter_zero", want: "replay", ctr: "0", note: "0 is well formed but never above the bound."},
		{name: "malformed_counter_leading_zero", want: "malformed", ctr: "042"},
		{name: "malformed_counter_negative", want: "malformed", ctr: "-1"},
		{name: "malformed_counter_fraction", want: "malformed", ctr: "42.0"},
		{name: "malformed_counter_exponent", want: "malformed", ctr: "4e1"},
		{name: "malformed_counter_string", want: "malformed", ctr: `"42"`},
		{name: "malformed_counter_too_large", want: "malformed", ctr: "9223372036854775808", note: "2^63 does not fit a signed 64-bit integer."},
		{name: "malformed_counter_and_timestamp", want: "malformed", note: "A message carries a timestamp or a counter, never both.",
			tmpl: `{"device_id":"{device}","counter":{ctr},"timestamp":{ts},"message_id":"{mid}","payload":{payload},"signature":"{sig}"}`},
		{name: "malformed_counter_on_timestamp_device", want: "malformed", freshness: "timestamp", note: "A device registered with timestamp freshness sends only timestamps."},
		{name: "malformed_timestamp_on_counter_device", want: "malformed", signed: timeSigning, tmpl: compactTS,
			note: "A device switched to counter mode: its earlier timestamp-mode messages are refused, whatever their time."},
		{name: "bad_signature_timestamp_renamed_counter", want: "bad_signature", ctr: defTS, signed: timeSigning,
			note: "A timestamp-mode message with its timestamp renamed to a counter: the signing bytes differ (the label), so it does not verify."},
		{name: "bad_signature_counter_tampered", want: "bad_signature", ctr: "43",
			signed: string(envelope.CounterSigningBytes(nil, defDevice, []byte("42"), []byte(defMID), []byte(defPayload))), note: "Signed with counter 42, sent with 43."},
		{name: "bad_signature_counter_wrong_secret", want: "bad_signature", signKey: otherKey},
	}
}

const compactTS = `{"device_id":"{device}","timestamp":{ts},"message_id":"{mid}","payload":{payload},"signature":"{sig}"}`

func timeRequestSpecs() []timeRequestVector {
	return []timeRequestVector{
		{Name: "time_request_basic", Message: `{"nonce":"` + ctrNonce + `"}`, Expected: "ok", Nonce: ctrNonce},
		{Name: "time_request_whitespace", Message: "{ \"nonce\" : \"" + ctrNonce + "\" }\n", Expected: "ok", Nonce: ctrNonce},
		{Name: "time_request_uppercase_nonce", Message: `{"nonce":"` + strings.ToUpper(ctrNonce) + `"}`, Expected: "malformed"},
		{Name: "time_request_short_nonce", Message: `{"nonce":"` + ctrNonce[:31] + `"}`, Expected: "malformed"},
		{Name: "time_request_extra_member", Message: `{"nonce":"` + ctrNonce + `","device_id":"sensor_001"}`, Expected: "malformed"},
		{Name: "time_request_escaped_nonce", Message: `{"nonce":"\u0030` + ctrNonce[1:] + `"}`, Expected: "malformed"},
		{Name: "time_request_no_nonce", Message: `{}`, Expected: "malformed"},
		{Name: "time_request_number", Message: `{"nonce":123}`, Expected: "malformed"},
		{Name: "time_request_trailing", Message: `{"nonce":"` + ctrNonce + `"}x`, Expected: "malformed"},
		{Name: "time_request_empty", Message: ``, Expected: "malformed"},
	}
}

func writeCounterVectors(t *testing.T, f *vectorFile) {
	base, _ := strconv.ParseInt(defTS, 10, 64)
	for _, s := range ctrSpecs() {
		v := counterVector{Name: s.name, Note: s.note, Secret: defSecret, TopicDevice: defDevice, Freshness: or(s.freshness, "counter"),
			CounterBound: s.bound, Now: base, Message: s.build(), Expected: s.want}
		if s.want != "malformed" {
			env, err := envelope.Parse([]byte(v.Message), envelope.Limits{})
			if err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			sig := envelope.Sign([]byte(v.Secret), &env)
			v.Signature = hex.EncodeToString(sig[:])
		}
		if got := checkCounterVector(t, v); got != s.want {
			t.Fatalf("generator: %s: verdict %s, want %s", s.name, got, s.want)
		}
		f.CounterVectors = append(f.CounterVectors, v)
	}
	f.TimeRequests = timeRequestSpecs()
	other := "ffeeddccbbaa99887766554433221100"
	reply := func(secret []byte, mid string, ts int64, payload []byte, down bool) string {
		e := envelope.Envelope{DeviceID: defDevice, Timestamp: ts, TimestampRaw: strconv.AppendInt(nil, ts, 10), MessageID: []byte(mid), Payload: payload}
		if down {
			e.Signature = envelope.SignDownlink(secret, &e)
		} else {
			e.Signature = envelope.Sign(secret, &e)
		}
		return string(envelope.AppendJSON(nil, &e))
	}
	sec := []byte(defSecret)
	ok := reply(sec, "8e2a4c6d-1f3b-4a5c-8d7e-9f0a1b2c3d4e", base+7, envelope.TimeReplyPayload([]byte(ctrNonce)), true)
	for _, r := range []timeReplyVector{
		{Name: "time_reply_ok", Note: "The answer to the request for nonce: the envelope's timestamp is the gateway's time.", Message: ok, Expected: "ok", Time: base + 7},
		{Name: "time_reply_other_nonce", Note: "A genuine answer to another request (captured earlier and replayed): refuse it.",
			Message: reply(sec, "8e2a4c6d-1f3b-4a5c-8d7e-9f0a1b2c3d4f", base-3600, envelope.TimeReplyPayload([]byte(other)), true), Expected: "other_nonce"},
		{Name: "time_reply_uplink_key", Note: "Signed with the secret itself, as an uplink is, not with K_down: not from the gateway.",
			Message: reply(sec, "8e2a4c6d-1f3b-4a5c-8d7e-9f0a1b2c3d50", base+7, envelope.TimeReplyPayload([]byte(ctrNonce)), false), Expected: "bad_signature"},
		{Name: "time_reply_tampered_time", Note: "The timestamp moved an hour back after signing.",
			Message: strings.Replace(ok, strconv.FormatInt(base+7, 10), strconv.FormatInt(base+7-3600, 10), 1), Expected: "bad_signature"},
		{Name: "time_reply_not_a_time_reply", Note: "A genuine notice is not a time reply, whatever its timestamp.",
			Message: reply(sec, "8e2a4c6d-1f3b-4a5c-8d7e-9f0a1b2c3d51", base+7, envelope.RejectionPayload([]byte(ctrNonce[:8]+"-0000-4000-8000-000000000000"), "stale"), true), Expected: "not_a_time_reply"},
	} {
		r.Secret, r.DownlinkKey, r.DeviceID, r.Nonce = defSecret, string(envelope.DownlinkKey(sec)), defDevice, ctrNonce
		f.TimeReplies = append(f.TimeReplies, r)
	}
}

// TestCounterVectors checks every counter-mode vector's verdict and
// signature.
func TestCounterVectors(t *testing.T) {
	f := loadVectorFile(t)
	if len(f.CounterVectors) == 0 {
		t.Fatal("no counter vectors")
	}
	seen := map[string]bool{}
	for _, v := range f.CounterVectors {
		t.Run(v.Name, func(t *testing.T) {
			if got := checkCounterVector(t, v); got != v.Expected {
				t.Fatalf("verdict = %s, want %s", got, v.Expected)
			}
			seen[v.Expected] = true
			if v.Expected == "malformed" {
				return
			}
			env, err := envelope.Parse([]byte(v.Message), envelope.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if !env.IsCounter() {
				t.Fatal("a well-formed counter vector without a counter")
			}
			sig := envelope.Sign([]byte(v.Secret), &env)
			if got := hex.EncodeToString(sig[:]); got != v.Signature {
				t.Fatalf("signature = %s, want %s", got, v.Signature)
			}
			if (sig == env.Signature) != (v.Expected != string(validate.BadSignature)) {
				t.Fatalf("verdict %s, and the message carries %x", v.Expected, env.Signature)
			}
		})
	}
	for _, want := range []string{"accepted", "replay", "malformed", "bad_signature"} {
		if !seen[want] {
			t.Errorf("no counter vector expects %s", want)
		}
	}
}

// TestTimeVectors checks the time requests with the gateway's parser and
// the time replies with CheckTimeReply, and that every time reply,
// republished as an uplink, is a bad_signature.
func TestTimeVectors(t *testing.T) {
	f := loadVectorFile(t)
	if len(f.TimeRequests) == 0 || len(f.TimeReplies) == 0 {
		t.Fatal("no time vectors")
	}
	for _, v := range f.TimeRequests {
		t.Run(v.Name, func(t *testing.T) {
			nonce, err := envelope.ParseTimeRequest([]byte(v.Message))
			switch {
			case v.Expected == "ok" && (err != nil || string(nonce) != v.Nonce):
				t.Fatalf("ParseTimeRequest = %q, %v; want %s", nonce, err, v.Nonce)
			case v.Expected == "malformed" && err == nil:
				t.Fatalf("ParseTimeRequest accepted it (nonce %q)", nonce)
			}
		})
	}
	want := map[string]error{"bad_signature": envelope.ErrTimeReplySignature, "other_nonce": envelope.ErrTimeReplyOtherNonce, "not_a_time_reply": envelope.ErrNotTimeReply}
	for _, v := range f.TimeReplies {
		t.Run(v.Name, func(t *testing.T) {
			if got := string(envelope.DownlinkKey([]byte(v.Secret))); got != v.DownlinkKey {
				t.Fatalf("DownlinkKey = %s, want %s", got, v.DownlinkKey)
			}
			ts, err := envelope.CheckTimeReply(envelope.NewDownlinkMAC([]byte(v.Secret)), v.DeviceID, []byte(v.Message), []byte(v.Nonce))
			switch {
			case v.Expected == "ok" && (err != nil || ts != v.Time):
				t.Fatalf("CheckTimeReply = %d, %v; want %d", ts, err, v.Time)
			case v.Expected != "ok" && !errors.Is(err, want[v.Expected]):
				t.Fatalf("CheckTimeReply = %d, %v; want %v", ts, err, want[v.Expected])
			}
			up := vector{Name: v.Name, Secret: v.Secret, TopicDevice: v.DeviceID, DeviceState: "enabled", Now: v.Time, Message: &v.Message}
			if v.Expected == "ok" {
				if got := checkVector(t, up); got != string(validate.BadSignature) {
					t.Fatalf("the time reply as an uplink: %s, want bad_signature", got)
				}
			}
		})
	}
}
