package test

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/test/harness"
)

// v5Result is what test/mqtt5/device5.py prints.
type v5Result struct {
	Assigned *string  `json:"assigned"`
	Sent     []string `json:"sent"`
	Replies  []struct {
		Valid     bool            `json:"valid"`
		InReplyTo string          `json:"in_reply_to"`
		Status    int             `json:"status"`
		Error     string          `json:"error"`
		Body      json.RawMessage `json:"body"`
	} `json:"replies"`
	Other []string `json:"other"`
}

// v5Device runs test/mqtt5/device5.py as id with clientID. Once it has its
// replies, during() runs (while it still listens), then it is stopped and
// its result returned.
func (f *fixture) v5Device(t *testing.T, py, id, clientID string, during func(), args ...string) v5Result {
	t.Helper()
	secretFile := filepath.Join(f.dir, id+".v5.secret")
	if err := os.WriteFile(secretFile, []byte(f.secrets[id]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	crt, key := pki.DeviceCert(f.certs, id)
	cmd := exec.Command(py, append([]string{filepath.Join(harness.RepoRoot(t), "test", "mqtt5", "device5.py"),
		"--host", "127.0.0.1", "--port", strconv.Itoa(f.broker.Port),
		"--ca", pki.Paths(f.certs).CACert, "--cert", crt, "--key", key,
		"--device", id, "--secret-file", secretFile, "--client-id", clientID}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewReader(stdout)
	first, err := lines.ReadString('\n')
	if err != nil || first != "ready\n" {
		t.Fatalf("device5.py: %q %v\nstderr: %s", first, err, stderr.String())
	}
	if during != nil {
		during()
	}
	stdin.Close()
	rest, _ := io.ReadAll(lines)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("device5.py: %v\nstderr: %s", err, stderr.String())
	}
	var res v5Result
	if err := json.Unmarshal(rest, &res); err != nil {
		t.Fatalf("device5.py printed %q: %v\nstderr: %s", rest, err, stderr.String())
	}
	return res
}

// checkReplies fails unless every message res sent has exactly one
// verified 200 reply, as a 3.1.1 device gets.
func checkReplies(t *testing.T, res v5Result) {
	t.Helper()
	if len(res.Replies) != len(res.Sent) {
		t.Fatalf("%d replies to %d messages: %+v", len(res.Replies), len(res.Sent), res)
	}
	want := map[string]bool{}
	for _, m := range res.Sent {
		want[m] = true
	}
	for _, r := range res.Replies {
		var body struct{ OK bool }
		if !r.Valid || !want[r.InReplyTo] || r.Status != 200 || json.Unmarshal(r.Body, &body) != nil || !body.OK || r.Error != "" {
			t.Fatalf("reply %+v: want a verified 200 reply to one of %v", r, res.Sent)
		}
		delete(want, r.InReplyTo)
	}
}

// TestMQTT5Device connects devices with MQTT 5 (paho-mqtt MQTTv5) to the
// shipped broker config and a real gateway (whose own connection stays
// 3.1.1). A v5 device is authenticated by its certificate and answered as
// a 3.1.1 device is: with its client id set to its CN, to another string
// (the broker replaces it by the CN: use_username_as_clientid), or to
// another device's id (no takeover: that device keeps its session), and
// when it publishes with a topic alias. It is held to its ACL: a message
// it publishes on another device's topic, validly signed by that device,
// never reaches the backend, and it receives none of the other device's
// replies although it subscribed to device/+/response.
func TestMQTT5Device(t *testing.T) {
	py := pythonWithPaho(t)
	f := newFixture(t, "v5_a", "v5_b")
	f.startGateway(gatewayOpts{})

	t.Run("client id is the CN", func(t *testing.T) {
		res := f.v5Device(t, py, "v5_a", "v5_a", nil)
		checkReplies(t, res)
	})
	t.Run("another client id", func(t *testing.T) {
		res := f.v5Device(t, py, "v5_a", "not-my-certificate-cn", nil)
		checkReplies(t, res)
		if res.Assigned != nil && *res.Assigned != "v5_a" {
			t.Fatalf("broker assigned client id %q, want the CN or none", *res.Assigned)
		}
	})
	t.Run("another device's id as client id", func(t *testing.T) {
		victim := f.device("v5_b") // 3.1.1, client id v5_b
		res := f.v5Device(t, py, "v5_a", "v5_b", nil)
		checkReplies(t, res)
		raw, msgID := victim.signed(`{"still":"here"}`, time.Now().Unix())
		victim.publish("", raw)
		if r, ok := victim.nextReply(10 * time.Second); !ok || !r.valid || replyPayload(t, r)["in_reply_to"] != msgID {
			t.Fatal("the device whose id the v5 device asked for lost its session")
		}
	})
	t.Run("topic alias", func(t *testing.T) {
		before := len(f.backend.requests())
		res := f.v5Device(t, py, "v5_b", "v5_b", nil, "--alias", "--count", "3")
		checkReplies(t, res)
		got := f.backend.requests()[before:]
		if len(got) != 3 {
			t.Fatalf("backend got %d messages, want 3", len(got))
		}
		for _, r := range got {
			if r.Header.Get("X-Device-ID") != "v5_b" {
				t.Fatalf("backend got a message for %q", r.Header.Get("X-Device-ID"))
			}
		}
	})
	t.Run("held to its ACL", func(t *testing.T) {
		foreign, foreignID := signAs("v5_b", f.secrets["v5_b"], `{"forged":true}`, time.Now().Unix())
		ff := filepath.Join(f.dir, "foreign.json")
		if err := os.WriteFile(ff, foreign, 0o600); err != nil {
			t.Fatal(err)
		}
		before := len(f.backend.requests())
		res := f.v5Device(t, py, "v5_a", "v5_a", func() {
			// v5_b, over 3.1.1, gets a reply while v5_a listens on device/+/response.
			b := f.device("v5_b")
			raw, msgID := b.signed(`{"own":true}`, time.Now().Unix())
			b.publish("", raw)
			if r, ok := b.nextReply(10 * time.Second); !ok || replyPayload(t, r)["in_reply_to"] != msgID {
				t.Fatal("v5_b got no reply")
			}
		}, "--foreign-topic", "device/v5_b/data", "--foreign-file", ff)
		checkReplies(t, res)
		if len(res.Other) != 0 {
			t.Fatalf("v5_a received %v: another device's replies", res.Other)
		}
		for _, r := range f.backend.requests()[before:] {
			if r.Header.Get("X-Message-ID") == foreignID {
				t.Fatal("a message v5_a published on v5_b's topic reached the backend")
			}
		}
	})
}
