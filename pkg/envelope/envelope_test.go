package envelope_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/envelope"
)

const secret = "a17513da805d98386da054eb4bcd037332257d556e379992293333e283e52a17"

func hexDecode(s string) ([32]byte, error) {
	var out [32]byte
	_, err := hex.Decode(out[:], []byte(s))
	return out, err
}

func TestSigningBytes(t *testing.T) {
	got := envelope.SigningBytes([]byte("prefix:"), "sensor_001", []byte("1727712000"),
		[]byte("550e8400-e29b-41d4-a716-446655440000"), []byte(`{ "t": 1 }`))
	want := "prefix:sensor_001\n1727712000\n550e8400-e29b-41d4-a716-446655440000\n{ \"t\": 1 }"
	if string(got) != want {
		t.Fatalf("SigningBytes = %q, want %q", got, want)
	}
}

func TestSignMatchesPlainHMAC(t *testing.T) {
	e, err := envelope.Parse([]byte(goodMsg), envelope.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(envelope.SigningBytes(nil, e.DeviceID, e.TimestampRaw, e.MessageID, e.Payload))
	want := mac.Sum(nil)
	got := envelope.Sign([]byte(secret), &e)
	if !hmac.Equal(got[:], want) || hex.EncodeToString(want) != goodSig {
		t.Fatalf("Sign = %x, HMAC = %x, vector %s", got, want, goodSig)
	}
}

func TestVerify(t *testing.T) {
	parse := func(t *testing.T, s string) envelope.Envelope {
		t.Helper()
		e, err := envelope.Parse([]byte(s), envelope.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	tests := []struct {
		name   string
		msg    string
		secret string
		want   bool
	}{
		{"good", goodMsg, secret, true},
		{"wrong secret", goodMsg, secret + "x", false},
		{"empty secret", goodMsg, "", false},
		{"tampered payload", strings.Replace(goodMsg, "22.5", "99.9", 1), secret, false},
		{"payload whitespace added", strings.Replace(goodMsg, `{"temperature":22.5}`, `{"temperature": 22.5}`, 1), secret, false},
		{"whitespace outside payload", strings.Replace(goodMsg, `"payload":`, `"payload" : `, 1), secret, true},
		{"tampered timestamp", withTimestamp("1727712001"), secret, false},
		{"tampered device", strings.Replace(goodMsg, "sensor_001", "sensor_002", 1), secret, false},
		{"tampered message id", strings.Replace(goodMsg, "446655440000", "446655440001", 1), secret, false},
		{"flipped signature bit", strings.Replace(goodMsg, goodSig, "240b"+goodSig[4:], 1), secret, false},
	}
	mac := envelope.NewMAC([]byte(secret)) // reused across cases: Verify resets it
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := parse(t, tc.msg)
			m := mac
			if tc.secret != secret {
				m = envelope.NewMAC([]byte(tc.secret))
			}
			if got := envelope.Verify(m, &e); got != tc.want {
				t.Fatalf("Verify = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNewAppendJSONRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		ts      int64
	}{
		{"object", `{"temperature":22.5}`, 1727712000},
		{"whitespace kept", "{ \"a\" : [1, 2],\n \"b\": \"Zürich\" }", 1727712000},
		{"array", `[1,2,3]`, 1},
		{"string", `"hello"`, 0},
		{"null", `null`, 999999999999},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := envelope.New([]byte(secret), "sensor_001", tc.ts, "550e8400-e29b-41d4-a716-446655440000", []byte(tc.payload))
			raw := envelope.AppendJSON(nil, &e)
			got, err := envelope.Parse(raw, envelope.Limits{})
			if err != nil {
				t.Fatalf("Parse(AppendJSON(New)) = %v\n%s", err, raw)
			}
			if got.Timestamp != tc.ts || string(got.Payload) != tc.payload || got.Signature != e.Signature {
				t.Fatalf("round trip = %+v, want %+v", got, e)
			}
			if !envelope.Verify(envelope.NewMAC([]byte(secret)), &got) {
				t.Fatal("round-tripped envelope does not verify")
			}
		})
	}
}

func TestNewMatchesContractExample(t *testing.T) {
	e := envelope.New([]byte(secret), "sensor_001", 1727712000, "550e8400-e29b-41d4-a716-446655440000", []byte(`{"temperature":22.5}`))
	if got := string(envelope.AppendJSON(nil, &e)); got != goodMsg {
		t.Fatalf("AppendJSON = %s\nwant %s", got, goodMsg)
	}
}

func TestValidDeviceID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"sensor_001", true},
		{"a", true},
		{"Az09_.-", true},
		{strings.Repeat("x", 64), true},
		{strings.Repeat("x", 65), false},
		{"", false},
		{"a b", false},
		{"a/b", false},
		{"a+b", false},
		{"a#", false},
		{"sensör", false},
		{".", false},
		{"..", false},
		{"...", false},
		{".hidden", false},
		{"a.", true},
		{"a..b", true},
		{"-a", true},
	}
	for _, tc := range tests {
		if got := envelope.ValidDeviceID(tc.id); got != tc.want {
			t.Errorf("ValidDeviceID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

func TestValidMessageID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"550e8400-e29b-41d4-a716-446655440000", true},
		{"00000000-0000-0000-0000-000000000000", true},
		{"550E8400-E29B-41D4-A716-446655440000", false},
		{"550e8400e29b41d4a716446655440000", false},
		{"550e8400-e29b-41d4-a716-44665544000", false},
		{"550e8400-e29b-41d4-a716-4466554400000", false},
		{"550e8400-e29b-41d4-a716_446655440000", false},
		{"{50e8400-e29b-41d4-a716-44665544000}", false},
		{"", false},
	}
	for _, tc := range tests {
		if got := envelope.ValidMessageID([]byte(tc.id)); got != tc.want {
			t.Errorf("ValidMessageID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}
