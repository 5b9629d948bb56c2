package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/envelope"
)

const (
	cliSecret = "a17513da805d98386da054eb4bcd037332257d556e379992293333e283e52a17"
	cliMsg    = `{"device_id":"sensor_001","timestamp":1727712000,"message_id":"550e8400-e29b-41d4-a716-446655440000","payload":{"temperature":22.5},"signature":"340b3bde06ab3037322bb2931e4f0172dc9a1f50ca04129d7c97d67518418353"}`
)

var uuidV4 = regexp.MustCompile(`"message_id":"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"`)

func TestSign(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(cliSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fixed := []string{"--device", "sensor_001", "--timestamp", "1727712000", "--message-id", "550e8400-e29b-41d4-a716-446655440000"}
	tests := []struct {
		name    string
		stdin   string
		args    []string
		code    int
		stdout  string // exact stdout when set
		errText string
	}{
		{"contract example from stdin", cliSecret + "\n", append(fixed, "--secret-stdin", "--payload", `{"temperature":22.5}`), 0, cliMsg + "\n", ""},
		{"contract example from file", "", append(fixed, "--secret-file", secretFile, "--payload", `{"temperature":22.5}`), 0, cliMsg + "\n", ""},
		{"surrounding whitespace dropped", cliSecret, append(fixed, "--secret-stdin", "--payload", " {\"temperature\":22.5}\n"), 0, cliMsg + "\n", ""},
		{"no secret source", "", append(fixed, "--payload", `{}`), 2, "", "secret is required"},
		{"both secret sources", cliSecret, append(fixed, "--secret-stdin", "--secret-file", secretFile), 2, "", "not both"},
		{"empty stdin", "", append(fixed, "--secret-stdin"), 2, "", "no secret"},
		{"missing secret file", "", append(fixed, "--secret-file", secretFile+".missing"), 1, "", "no such file"},
		{"invalid JSON payload", cliSecret, append(fixed, "--secret-stdin", "--payload", `{"t":}`), 2, "", "not valid JSON"},
		{"invalid UTF-8 payload", cliSecret, append(fixed, "--secret-stdin", "--payload", "\"\xff\""), 2, "", "invalid UTF-8"},
		{"no device", cliSecret, []string{"--secret-stdin"}, 2, "", "bad device id"},
		{"bad device", cliSecret, []string{"--secret-stdin", "--device", "a/b"}, 2, "", "bad device id"},
		{"device dot dot", cliSecret, []string{"--secret-stdin", "--device", ".."}, 2, "", "bad device id"},
		{"device dot", cliSecret, []string{"--secret-stdin", "--device", "."}, 2, "", "bad device id"},
		{"device leading dot", cliSecret, []string{"--secret-stdin", "--device", ".sensor"}, 2, "", "bad device id"},
		{"uppercase message id", cliSecret, []string{"--secret-stdin", "--device", "d", "--message-id", "550E8400-E29B-41D4-A716-446655440000"}, 2, "", "lowercase UUID"},
		{"negative timestamp", cliSecret, []string{"--secret-stdin", "--device", "d", "--timestamp", "-1"}, 2, "", "--timestamp"},
		{"milliseconds timestamp", cliSecret, []string{"--secret-stdin", "--device", "d", "--timestamp", "1727712000000"}, 2, "", "--timestamp"},
		{"non-numeric timestamp", cliSecret, []string{"--secret-stdin", "--device", "d", "--timestamp", "soon"}, 2, "", "invalid argument"},
		{"counter mode (vector accepted_counter_next)", cliSecret, []string{"--secret-stdin", "--device", "sensor_001", "--counter", "42",
			"--message-id", "550e8400-e29b-41d4-a716-446655440000", "--payload", `{"temperature":22.5}`}, 0,
			`{"device_id":"sensor_001","counter":42,"message_id":"550e8400-e29b-41d4-a716-446655440000","payload":{"temperature":22.5},"signature":"df658a8d14ee8c104848ccf0c12a0a733ed23383b20dbee965626073044b7405"}` + "\n", ""},
		{"counter and timestamp", cliSecret, append(fixed, "--secret-stdin", "--counter", "1"), 2, "", "exclude each other"},
		{"negative counter", cliSecret, []string{"--secret-stdin", "--device", "d", "--counter", "-1"}, 2, "", "--counter"},
		{"counter in a reply", cliSecret, []string{"--secret-stdin", "--device", "d", "--counter", "1", "--reply"}, 2, "", "never a counter"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, tc.stdin, append([]string{"sign"}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit %d (%v), want %d", r.code, r.err, tc.code)
			}
			if tc.stdout != "" && r.stdout != tc.stdout {
				t.Fatalf("stdout\n%s\nwant\n%s", r.stdout, tc.stdout)
			}
			if tc.errText != "" && (r.err == nil || !strings.Contains(r.err.Error(), tc.errText)) {
				t.Fatalf("error %v, want one containing %q", r.err, tc.errText)
			}
			if strings.Contains(r.stderr, cliSecret) {
				t.Fatal("the secret was printed")
			}
		})
	}
}

func TestSignDefaults(t *testing.T) {
	r := runCLI(t, cliSecret+"\n", "sign", "--device", "sensor_001", "--secret-stdin")
	if r.code != 0 {
		t.Fatal(r.err)
	}
	e, err := envelope.Parse([]byte(r.stdout), envelope.Limits{})
	if err != nil {
		t.Fatalf("sign printed %q: %v", r.stdout, err)
	}
	if string(e.Payload) != "{}" || !uuidV4.MatchString(r.stdout) || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("sign printed %q", r.stdout)
	}
	again := runCLI(t, cliSecret+"\n", "sign", "--device", "sensor_001", "--secret-stdin")
	if again.stdout == r.stdout {
		t.Fatal("two signs gave the same message id")
	}
}

func TestSignThenVerify(t *testing.T) {
	signed := runCLI(t, cliSecret+"\n", "sign", "--device", "sensor_001", "--secret-stdin", "--payload", "{ \"temp\" : 21.5,\n \"city\": \"Zürich\" }")
	if signed.code != 0 {
		t.Fatal(signed.err)
	}
	msg := signed.stdout
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(cliSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tampered := strings.Replace(msg, "21.5", "99.5", 1)
	tests := []struct {
		name   string
		stdin  string
		args   []string
		code   int
		stdout string
	}{
		{"valid, secret on stdin", cliSecret + "\n" + msg, []string{"--secret-stdin"}, 0, "valid\n"},
		{"valid, secret in a file", msg, []string{"--secret-file", secretFile}, 0, "valid\n"},
		{"valid, topic given", msg, []string{"--secret-file", secretFile, "--device", "sensor_001"}, 0, "valid\n"},
		{"tampered", cliSecret + "\n" + tampered, []string{"--secret-stdin"}, 1, "bad_signature\n"},
		{"wrong secret", "not-the-secret-0123456789\n" + msg, []string{"--secret-stdin"}, 1, "bad_signature\n"},
		{"other topic", msg, []string{"--secret-file", secretFile, "--device", "sensor_002"}, 1, "identity_mismatch: topic device differs from device_id\n"},
		{"stale", msg, []string{"--secret-file", secretFile, "--now", "1727712000"}, 1, "stale"},
		{"malformed", cliSecret + "\n{}", []string{"--secret-stdin"}, 1, "malformed: missing fields"},
		{"empty message", cliSecret + "\n", []string{"--secret-stdin"}, 1, "malformed"},
		{"no secret source", msg, nil, 2, ""},
		{"bad skew", msg, []string{"--secret-file", secretFile, "--max-clock-skew", "0s"}, 2, ""},
		{"topic that is no device id", msg, []string{"--secret-file", secretFile, "--device", "a/b"}, 1, "identity_mismatch"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, tc.stdin, append([]string{"verify"}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit %d (%v), want %d; stdout %q", r.code, r.err, tc.code, r.stdout)
			}
			if !strings.HasPrefix(r.stdout, tc.stdout) {
				t.Fatalf("stdout %q, want %q", r.stdout, tc.stdout)
			}
		})
	}
}

// TestVerifyVectors runs the golden vectors through iotgw verify. Vectors
// that need registry state the CLI cannot express (an unregistered or
// disabled device, an earlier message) are left to pkg/validate.
func TestVerifyVectors(t *testing.T) {
	b, err := os.ReadFile("../../testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Vectors []struct {
			Name, Secret, Expected string
			TopicDevice            string  `json:"topic_device"`
			DeviceState            string  `json:"device_state"`
			Now                    int64   `json:"now"`
			MaxMessageBytes        int     `json:"max_message_bytes"`
			MaxDepth               int     `json:"max_depth"`
			PrecededBy             string  `json:"preceded_by"`
			Message                *string `json:"message"`
			MessageBase64          string  `json:"message_base64"`
		}
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	ran := 0
	for _, v := range f.Vectors {
		if v.DeviceState != "enabled" || v.PrecededBy != "" {
			continue
		}
		ran++
		t.Run(v.Name, func(t *testing.T) {
			raw := []byte(nil)
			if v.Message != nil {
				raw = []byte(*v.Message)
			} else if raw, err = base64.StdEncoding.DecodeString(v.MessageBase64); err != nil {
				t.Fatal(err)
			}
			args := []string{"verify", "--secret-stdin", "--device", v.TopicDevice, "--now", strconv.FormatInt(v.Now, 10)}
			if v.MaxMessageBytes > 0 {
				args = append(args, "--max-message-bytes", strconv.Itoa(v.MaxMessageBytes))
			}
			if v.MaxDepth > 0 {
				args = append(args, "--max-depth", strconv.Itoa(v.MaxDepth))
			}
			r := runCLI(t, v.Secret+"\n"+string(raw), args...)
			got := strings.TrimSpace(r.stdout)
			if got != "valid" {
				got, _, _ = strings.Cut(got, ":")
			}
			want := map[string]string{"accepted": "valid"}[v.Expected]
			if want == "" {
				want = v.Expected
			}
			if got != want || (r.code == 0) != (want == "valid") {
				t.Fatalf("verify printed %q, exit %d (%v); want %s", r.stdout, r.code, r.err, want)
			}
		})
	}
	if ran < 40 {
		t.Fatalf("only %d vectors ran", ran)
	}
}

// TestVerifyReplyVectors runs the downlink vectors through iotgw verify
// --reply (valid) and plain verify (bad_signature: a reflected downlink).
func TestVerifyReplyVectors(t *testing.T) {
	b, err := os.ReadFile("../../testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Replies []struct {
			Name, Secret, Message string
			Now                   int64 `json:"now"`
		}
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Replies) == 0 {
		t.Fatal("no reply vectors")
	}
	for _, v := range f.Replies {
		t.Run(v.Name, func(t *testing.T) {
			now := strconv.FormatInt(v.Now, 10)
			if r := runCLI(t, v.Secret+"\n"+v.Message, "verify", "--reply", "--secret-stdin", "--now", now); r.code != 0 || r.stdout != "valid\n" {
				t.Fatalf("verify --reply: exit %d, %q (%v)", r.code, r.stdout, r.err)
			}
			if r := runCLI(t, v.Secret+"\n"+v.Message, "verify", "--secret-stdin", "--now", now); r.code != 1 || r.stdout != "bad_signature\n" {
				t.Fatalf("verify (as an uplink): exit %d, %q; want bad_signature", r.code, r.stdout)
			}
		})
	}
}

// TestSignReply checks sign --reply against verify --reply and the vector
// reply_forwarded.
func TestSignReply(t *testing.T) {
	const payload = `{"in_reply_to":"550e8400-e29b-41d4-a716-446655440000","status":200,"body":{"ok":true}}`
	r := runCLI(t, cliSecret+"\n", "sign", "--reply", "--secret-stdin", "--device", "sensor_001", "--timestamp", "1727712000",
		"--message-id", "7d3f1c2a-8e4b-4d5c-9e6f-0a1b2c3d4e5f", "--payload", payload)
	if r.code != 0 {
		t.Fatal(r.err)
	}
	const want = `{"device_id":"sensor_001","timestamp":1727712000,"message_id":"7d3f1c2a-8e4b-4d5c-9e6f-0a1b2c3d4e5f","payload":` + payload +
		`,"signature":"3ab259e72207cd523bf1e15e5aeb0ddd4798d42cd5840aaed63eacd32b106db1"}` + "\n"
	if r.stdout != want {
		t.Fatalf("sign --reply printed\n%s\nwant (vector reply_forwarded)\n%s", r.stdout, want)
	}
	if v := runCLI(t, cliSecret+"\n"+r.stdout, "verify", "--reply", "--secret-stdin", "--now", "1727712000"); v.stdout != "valid\n" {
		t.Fatalf("verify --reply: %q", v.stdout)
	}
}

// TestVerifyPrintsTheReasonOnce (issue 16, item 15): a rejected message's
// reason is printed once (on stdout, with its detail), not again on
// stderr as "iotgw: message rejected: <reason>".
func TestVerifyPrintsTheReasonOnce(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(cliSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	signed := runCLI(t, cliSecret+"\n", "sign", "--device", "sensor_001", "--secret-stdin", "--payload", `{"t":1}`, "--timestamp", "1727712000")
	if signed.code != 0 {
		t.Fatalf("sign: %v", signed.err)
	}
	r := runCLI(t, signed.stdout, "verify", "--secret-file", secretFile, "--now", "1727715000")
	var stderr strings.Builder
	if code := report(&stderr, r.err); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	all := r.stdout + r.stderr + stderr.String()
	if n := strings.Count(all, "stale"); n != 1 {
		t.Errorf("the reason appears %d times, want once:\nstdout %q\nstderr %q", n, r.stdout, r.stderr+stderr.String())
	}
}
