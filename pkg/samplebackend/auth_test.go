package samplebackend

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/backendsig"
	"github.com/iotgw/iotgw/pkg/forward"
)

const (
	authToken = "tok-0c1d2e3f4a5b6c7d8e9f"
	authKey   = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"
)

func writeSecret(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// captured is one request a real forward.Client sent.
type captured struct {
	method, target string
	header         http.Header
	body           []byte
}

// sendWith has a real forward.Client (the gateway's) send one message and
// one batch with the given token and key files, and returns what it sent.
func sendWith(t *testing.T, tokenFile, keyFile string) (single, batch captured) {
	t.Helper()
	got := make(chan captured, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- captured{r.Method, r.RequestURI, r.Header.Clone(), body}
		if _, err := io.WriteString(w, `[{"status":200,"body":{}}]`); err != nil {
			t.Errorf("backend reply: %v", err)
		}
	}))
	defer srv.Close()
	cfg := forward.DefaultConfig()
	cfg.URL, cfg.BatchMax, cfg.BatchURL = srv.URL+"/ingest/{device_id}", 4, srv.URL+"/batch"
	cfg.BearerTokenFile, cfg.SigningKeyFile = tokenFile, keyFile
	c, err := forward.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	j := &forward.Job{DeviceID: "sensor_001", MessageID: "550e8400-e29b-41d4-a716-446655440000", Timestamp: "1700000000",
		Order: 42, Payload: []byte(`{"temperature":22.5}`)}
	if _, err := c.Post(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PostBatch(context.Background(), []*forward.Job{j}); err != nil {
		t.Fatal(err)
	}
	return <-got, <-got
}

// TestBackendRequiresSignatureAndToken: with --signing-key-file and
// --bearer-token-file the sample backend accepts what the gateway's client
// sends, and answers 401 with one log line naming the reason to a missing,
// wrong or stale credential or a tampered request.
func TestBackendRequiresSignatureAndToken(t *testing.T) {
	tokenFile, keyFile := writeSecret(t, authToken), writeSecret(t, authKey)
	single, batch := sendWith(t, tokenFile, keyFile)
	wrongKey, _ := sendWith(t, tokenFile, writeSecret(t, strings.Repeat("k", 64)))
	wrongToken, _ := sendWith(t, writeSecret(t, "not-the-token"), keyFile)
	noSig, _ := sendWith(t, tokenFile, "")
	noToken, _ := sendWith(t, "", keyFile)

	o := Options{BearerTokenFile: tokenFile, SigningKeyFile: keyFile, SigningScheme: backendsig.SchemeV2, SigningMaxSkew: 5 * time.Minute}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	b.errOut = &logBuf
	h := b.Handler()
	tests := []struct {
		name   string
		req    captured
		edit   func(*captured)
		later  time.Duration
		status int
		reason string
	}{
		{"genuine", single, nil, 0, 200, ""},
		{"genuine batch", batch, nil, 0, 200, ""},
		{"tampered body", single, func(c *captured) { c.body = []byte(`{"temperature":99.5}`) }, 0, 401, "bad signature"},
		{"tampered device id header", single, func(c *captured) { c.header.Set("X-Device-Id", "sensor_002") }, 0, 401, "bad signature"},
		{"tampered idempotency key", single, func(c *captured) { c.header.Set("Idempotency-Key", "650e8400-e29b-41d4-a716-446655440000") }, 0, 401, "bad signature"},
		{"tampered X-Device-Timestamp", single, func(c *captured) { c.header.Set("X-Device-Timestamp", "1") }, 0, 401, "bad signature"},
		{"tampered X-Iotgw-Seq", single, func(c *captured) { c.header.Set("X-Iotgw-Seq", "43") }, 0, 401, "bad signature"},
		{"other path", single, func(c *captured) { c.target = "/ingest/sensor_002" }, 0, 401, "bad signature"},
		{"tampered batch body", batch, func(c *captured) { c.body = bytes.Replace(c.body, []byte("sensor_001"), []byte("sensor_002"), 1) }, 0, 401, "bad signature"},
		{"replayed 10 minutes later", single, nil, 10 * time.Minute, 401, "stale"},
		{"wrong key", wrongKey, nil, 0, 401, "bad signature"},
		{"no signature", noSig, nil, 0, 401, "no X-Iotgw-Signature"},
		{"wrong token", wrongToken, nil, 0, 401, "bearer token"},
		{"no token", noToken, nil, 0, 401, "bearer token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.req
			c.header = c.header.Clone()
			if tc.edit != nil {
				tc.edit(&c)
			}
			b.now = func() time.Time { return time.Now().Add(tc.later) }
			logBuf.Reset()
			r := httptest.NewRequest(c.method, c.target, bytes.NewReader(c.body))
			r.Header = c.header
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("status %d (%s), want %d", w.Code, strings.TrimSpace(w.Body.String()), tc.status)
			}
			line := logBuf.String()
			if tc.status == 200 {
				if line != "" {
					t.Errorf("log %q for an accepted request", line)
				}
				return
			}
			if strings.Count(line, "\n") != 1 || !strings.Contains(line, "401") || !strings.Contains(line, tc.reason) {
				t.Errorf("log %q, want one line naming 401 and %q", line, tc.reason)
			}
			if strings.Contains(line, authToken) || strings.Contains(line, authKey) || strings.Contains(w.Body.String(), authToken) {
				t.Errorf("a secret in the log %q or answer %q", line, w.Body)
			}
		})
	}
	if b.unauthorized != len(tests)-2 || b.ok != 2 {
		t.Errorf("unauthorized=%d ok=%d, want %d and 2", b.unauthorized, b.ok, len(tests)-2)
	}
}

// TestBackendAuthFlags: unreadable or too-open secret files are refused at
// start, with one line.
func TestBackendAuthFlags(t *testing.T) {
	open := writeSecret(t, authKey)
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{
		{SigningKeyFile: "/nonexistent/key", SigningMaxSkew: time.Minute},
		{SigningKeyFile: open, SigningMaxSkew: time.Minute},
		{SigningKeyFile: writeSecret(t, "short"), SigningMaxSkew: time.Minute},
		{BearerTokenFile: writeSecret(t, "a\nb"), SigningMaxSkew: time.Minute},
		{SigningKeyFile: writeSecret(t, authKey), SigningScheme: "v3", SigningMaxSkew: time.Minute},
	} {
		_, err := New(o)
		if err == nil || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), authKey) {
			t.Errorf("%+v: %v, want one line without the secret", o, err)
		}
	}
}

// TestBackendRecordsSignedMessageID: someone on the path strips the
// unsigned X-Message-ID of a signed POST (VerifyRequest refuses a
// different one, not a missing one). The sample backend still records the
// message under the signed Idempotency-Key, so its duplicate counting
// cannot be dodged that way.
func TestBackendRecordsSignedMessageID(t *testing.T) {
	keyFile := writeSecret(t, authKey)
	single, _ := sendWith(t, "", keyFile)
	b, err := New(Options{SigningKeyFile: keyFile, SigningScheme: backendsig.SchemeV2, SigningMaxSkew: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	b.errOut = io.Discard
	h := b.Handler()
	for range 2 {
		r := httptest.NewRequest(single.method, single.target, bytes.NewReader(single.body))
		r.Header = single.header.Clone()
		r.Header.Del("X-Message-Id")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			t.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
	id := single.header.Get("Idempotency-Key")
	if b.seen[id] != 2 || b.seen[""] != 0 {
		t.Fatalf("recorded %d under the Idempotency-Key %s and %d under \"\", want 2 and 0", b.seen[id], id, b.seen[""])
	}
}

// TestBackendControlNeedsAuth: with --bearer-token-file and
// --signing-key-file set, an unauthenticated POST /fail (which would make
// the backend answer the gateway's next message with a final 410, so the
// message is dropped) and GET /stats are refused with 401 and change
// nothing; the same requests with the token and a signature are served.
func TestBackendControlNeedsAuth(t *testing.T) {
	tokenFile, keyFile := writeSecret(t, authToken), writeSecret(t, authKey)
	b, err := New(Options{BearerTokenFile: tokenFile, SigningKeyFile: keyFile, SigningScheme: backendsig.SchemeV2, SigningMaxSkew: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	b.errOut = io.Discard
	h := b.Handler()
	do := func(method, target string, auth bool) int {
		r := httptest.NewRequest(method, target, nil)
		if auth {
			ts := time.Now().Unix()
			r.Header.Set("Authorization", "Bearer "+authToken)
			r.Header.Set(backendsig.TimestampHeader, strconv.FormatInt(ts, 10))
			r.Header.Set(backendsig.SignatureHeader, backendsig.Sign([]byte(authKey), backendsig.SchemeV2, method, target, backendsig.Signed{}, ts, nil))
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	if got := do("POST", "/fail?for=1h&status=410", false); got != http.StatusUnauthorized {
		t.Errorf("unauthenticated POST /fail = %d, want 401", got)
	}
	if !b.failUntil.IsZero() {
		t.Fatalf("an unauthenticated POST /fail started an outage until %v", b.failUntil)
	}
	if got := do("GET", "/stats", false); got != http.StatusUnauthorized {
		t.Errorf("unauthenticated GET /stats = %d, want 401", got)
	}
	if got := do("POST", "/fail?for=1h&status=410", true); got != http.StatusOK || b.failUntil.IsZero() {
		t.Errorf("authenticated POST /fail = %d (outage until %v), want 200 and an outage", got, b.failUntil)
	}
	if got := do("GET", "/stats?message_id=m1", true); got != http.StatusOK {
		t.Errorf("authenticated GET /stats = %d, want 200", got)
	}
}
