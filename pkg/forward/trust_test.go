package forward_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/pki"
)

const (
	testToken = "tok-3f9a1c77e2b94d0a8c55e6f1b2a3c4d5"
	testKey   = "5f0c9e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766"
)

// secretFile writes content to a new 0600 file (mode overrides) and
// returns its path.
func secretFile(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigValidateTrust(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	p := pki.Paths(dir)
	token := secretFile(t, "token", testToken+"\n", 0o600)
	key := secretFile(t, "key", testKey+"\n", 0o600)
	secrets := []string{testToken, testKey, "s3cr3t-line-two"}
	tests := []struct {
		name    string
		edit    func(*forward.Config)
		wantErr string // "" for valid
	}{
		{"no trust settings", func(*forward.Config) {}, ""},
		{"bearer token", func(c *forward.Config) { c.BearerTokenFile = token }, ""},
		{"token without newline", func(c *forward.Config) { c.BearerTokenFile = secretFile(t, "t", testToken, 0o600) }, ""},
		{"token with CRLF", func(c *forward.Config) { c.BearerTokenFile = secretFile(t, "t", testToken+"\r\n", 0o600) }, ""},
		{"token file missing", func(c *forward.Config) { c.BearerTokenFile = "/nonexistent/token" }, "backend.bearer_token_file"},
		{"token file readable by others", func(c *forward.Config) { c.BearerTokenFile = secretFile(t, "t", testToken, 0o644) }, "chmod 600"},
		{"token empty", func(c *forward.Config) { c.BearerTokenFile = secretFile(t, "t", "\n", 0o600) }, "backend.bearer_token_file: "},
		{"token two lines", func(c *forward.Config) {
			c.BearerTokenFile = secretFile(t, "t", testToken+"\ns3cr3t-line-two\n", 0o600)
		}, "more than one line"},
		{"token with a space", func(c *forward.Config) { c.BearerTokenFile = secretFile(t, "t", "Bearer "+testToken, 0o600) }, "backend.bearer_token_file"},
		{"token with two newlines", func(c *forward.Config) { c.BearerTokenFile = secretFile(t, "t", testToken+"\n\n", 0o600) }, "more than one line"},
		{"signing key", func(c *forward.Config) { c.SigningKeyFile = key }, ""},
		{"signature scheme v1", func(c *forward.Config) { c.SigningKeyFile, c.SignatureScheme = key, forward.SchemeV1 }, ""},
		{"signature scheme unknown", func(c *forward.Config) { c.SigningKeyFile, c.SignatureScheme = key, "v3" }, "backend.signature_scheme"},
		{"signature scheme empty", func(c *forward.Config) { c.SignatureScheme = "" }, "backend.signature_scheme"},
		{"signing key too short", func(c *forward.Config) { c.SigningKeyFile = secretFile(t, "k", "short\n", 0o600) }, "at least 32"},
		{"signing key readable by group", func(c *forward.Config) { c.SigningKeyFile = secretFile(t, "k", testKey, 0o640) }, "chmod 600"},
		{"signing key is the token", func(c *forward.Config) {
			c.BearerTokenFile, c.SigningKeyFile = secretFile(t, "t", testKey, 0o600), key
		}, "one key per purpose"},
		{"https with CA", func(c *forward.Config) { c.URL = "https://127.0.0.1:1/x"; c.CAFile = p.CACert }, ""},
		{"https with client cert", func(c *forward.Config) {
			c.URL, c.CAFile, c.CertFile, c.KeyFile = "https://127.0.0.1:1/x", p.CACert, p.GatewayCert, p.GatewayKey
		}, ""},
		{"cert without key", func(c *forward.Config) { c.URL, c.CertFile = "https://127.0.0.1:1/x", p.GatewayCert }, "backend.cert_file and backend.key_file"},
		{"key without cert", func(c *forward.Config) { c.URL, c.KeyFile = "https://127.0.0.1:1/x", p.GatewayKey }, "backend.cert_file and backend.key_file"},
		{"TLS files with http url", func(c *forward.Config) { c.CAFile = p.CACert }, "need an https:// backend.url"},
		{"TLS files with http batch url", func(c *forward.Config) {
			c.URL, c.CAFile, c.BatchMax, c.BatchURL = "https://127.0.0.1:1/x", p.CACert, 4, "http://127.0.0.1:1/batch"
		}, "backend.batch_url"},
		{"CA file not PEM", func(c *forward.Config) { c.URL, c.CAFile = "https://127.0.0.1:1/x", token }, "backend.ca_file"},
		{"key file readable by others", func(c *forward.Config) {
			b, _ := os.ReadFile(p.GatewayKey)
			c.URL, c.CertFile, c.KeyFile = "https://127.0.0.1:1/x", p.GatewayCert, secretFile(t, "gw.key", string(b), 0o644)
		}, "chmod 600"},
		{"key does not match cert", func(c *forward.Config) {
			c.URL, c.CertFile, c.KeyFile = "https://127.0.0.1:1/x", p.GatewayCert, p.CAKey
		}, "backend.cert_file/key_file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := forward.DefaultConfig()
			cfg.URL = "http://127.0.0.1:1/ingest/{device_id}"
			tc.edit(&cfg)
			err := cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				if _, err := forward.NewClient(cfg); err != nil {
					t.Fatalf("NewClient: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			for _, s := range secrets {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q leaks a secret", err)
				}
			}
			if _, err := forward.NewClient(cfg); err == nil {
				t.Error("NewClient accepted what Validate refused")
			}
		})
	}
}

// capture starts a backend that records requests and answers 200 (a batch
// answer for /batch).
func capture(t *testing.T) (*httptest.Server, <-chan request) {
	return backend(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/batch") {
			fmt.Fprint(w, `[{"status":200,"body":{}}]`)
			return
		}
		fmt.Fprint(w, `{"ok":true}`)
	})
}

func asHTTP(t *testing.T, r request) *http.Request {
	t.Helper()
	hr := httptest.NewRequest(r.method, r.uri, bytes.NewReader(r.body))
	hr.Header = r.header.Clone()
	return hr
}

// TestClientBearerAndSignature: with bearer_token_file and
// signing_key_file the Client sends Authorization and a v2 signature that
// VerifyRequest accepts, on single and batch POSTs; without them, neither.
// With signature_scheme v1 it signs v1, which a v2 verifier refuses.
func TestClientBearerAndSignature(t *testing.T) {
	srv, reqs := capture(t)
	now := time.Unix(1727712005, 0)
	c := clientFor(srv.URL+"/ingest/{device_id}?tenant=a%2Fb", func(c *forward.Config) {
		c.BearerTokenFile = secretFile(t, "token", testToken+"\n", 0o600)
		c.SigningKeyFile = secretFile(t, "key", testKey+"\n", 0o600)
		c.BatchMax, c.BatchURL = 4, srv.URL+"/batch"
	})
	forward.SetClientClock(c, func() time.Time { return now })
	j := testJob()
	j.Order = 42 // X-Iotgw-Seq
	if _, err := c.Post(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PostBatch(context.Background(), []*forward.Job{j}); err != nil {
		t.Fatal(err)
	}
	for _, what := range []string{"single", "batch"} {
		r := <-reqs
		if got := r.header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+testToken {
			t.Errorf("%s: Authorization %q, want [Bearer <token>]", what, got)
		}
		if got := r.header.Get(forward.TimestampHeader); got != "1727712005" {
			t.Errorf("%s: %s %q, want the client clock's 1727712005", what, forward.TimestampHeader, got)
		}
		if got := r.header.Get(forward.SignatureHeader); !strings.HasPrefix(got, "v2=") {
			t.Errorf("%s: %s %q, want the default scheme v2", what, forward.SignatureHeader, got)
		}
		if err := forward.VerifyRequest([]byte(testKey), forward.SchemeV2, asHTTP(t, r), r.body, now, time.Minute); err != nil {
			t.Errorf("%s: VerifyRequest: %v", what, err)
		}
		if err := forward.VerifyRequest([]byte(testKey+"x"), forward.SchemeV2, asHTTP(t, r), r.body, now, time.Minute); !errors.Is(err, forward.ErrSignatureInvalid) {
			t.Errorf("%s: VerifyRequest with another key: %v, want ErrSignatureInvalid", what, err)
		}
	}

	v1 := clientFor(srv.URL+"/ingest/{device_id}", func(c *forward.Config) {
		c.SigningKeyFile = secretFile(t, "key", testKey+"\n", 0o600)
		c.SignatureScheme = forward.SchemeV1
	})
	forward.SetClientClock(v1, func() time.Time { return now })
	if _, err := v1.Post(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	r := <-reqs
	if err := forward.VerifyRequest([]byte(testKey), forward.SchemeV1, asHTTP(t, r), r.body, now, time.Minute); err != nil {
		t.Errorf("signature_scheme v1: VerifyRequest v1: %v", err)
	}
	if err := forward.VerifyRequest([]byte(testKey), forward.SchemeV2, asHTTP(t, r), r.body, now, time.Minute); !errors.Is(err, forward.ErrSignatureInvalid) {
		t.Errorf("signature_scheme v1: a v2 verifier said %v, want ErrSignatureInvalid", err)
	}

	plain := clientFor(srv.URL+"/ingest/{device_id}", nil)
	if _, err := plain.Post(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	r = <-reqs
	for _, h := range []string{"Authorization", forward.SignatureHeader, forward.TimestampHeader} {
		if v := r.header.Values(h); v != nil {
			t.Errorf("no trust settings, yet header %s: %q", h, v)
		}
	}
}

// TestSignatureVectors: Sign reproduces testdata/backend-signature.json,
// whose signatures were computed with Python's hmac module, not this code.
func TestSignatureVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/backend-signature.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Key     string
		Vectors []struct {
			Name, Scheme, Method, Target, Body, Signature string
			DeviceID                                      string `json:"device_id"`
			IdempotencyKey                                string `json:"idempotency_key"`
			DeviceTimestamp                               string `json:"device_timestamp"`
			Seq                                           string `json:"seq"`
			SigningBytes                                  string `json:"signing_bytes"`
			Timestamp                                     int64
		}
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	schemes := map[string]int{}
	for _, v := range file.Vectors {
		schemes[v.Scheme]++
	}
	if schemes[forward.SchemeV2] < 3 || schemes[forward.SchemeV1] < 3 || len(schemes) != 2 {
		t.Fatalf("vectors per scheme: %v, want 3 or more of each of v2 and v1", schemes)
	}
	for _, v := range file.Vectors {
		t.Run(v.Scheme+"/"+v.Name, func(t *testing.T) {
			h := forward.Signed{DeviceID: v.DeviceID, IdempotencyKey: v.IdempotencyKey, DeviceTimestamp: v.DeviceTimestamp, Seq: v.Seq}
			sb := forward.SigningBytes(v.Scheme, v.Method, v.Target, h, v.Timestamp, []byte(v.Body))
			if string(sb) != v.SigningBytes {
				t.Errorf("SigningBytes = %q, want %q", sb, v.SigningBytes)
			}
			if got := forward.Sign([]byte(file.Key), v.Scheme, v.Method, v.Target, h, v.Timestamp, []byte(v.Body)); got != v.Signature {
				t.Errorf("Sign = %s, want %s", got, v.Signature)
			}
			r := httptest.NewRequest(v.Method, v.Target, strings.NewReader(v.Body))
			for name, val := range map[string]string{"X-Device-Id": v.DeviceID, "Idempotency-Key": v.IdempotencyKey,
				"X-Device-Timestamp": v.DeviceTimestamp, "X-Iotgw-Seq": v.Seq} {
				if val != "" {
					r.Header.Set(name, val)
				}
			}
			r.Header.Set(forward.TimestampHeader, fmt.Sprint(v.Timestamp))
			r.Header.Set(forward.SignatureHeader, v.Signature)
			if err := forward.VerifyRequest([]byte(file.Key), v.Scheme, r, []byte(v.Body), time.Unix(v.Timestamp+60, 0), 5*time.Minute); err != nil {
				t.Errorf("VerifyRequest: %v", err)
			}
		})
	}
}

// TestVerifyRequestRejects: every field is covered (under v2 also
// X-Device-Timestamp and X-Iotgw-Seq), the timestamp must be fresh, a
// malformed or repeated header is refused, and so is a signature of
// another scheme than the one expected (no downgrade to v1).
func TestVerifyRequestRejects(t *testing.T) {
	key := []byte(testKey)
	ts := int64(1727712005)
	body := []byte(`{"temperature":22.5}`)
	signed := forward.Signed{DeviceID: "sensor_001", IdempotencyKey: "550e8400-e29b-41d4-a716-446655440000",
		DeviceTimestamp: "1727712000", Seq: "42"}
	good := func() *http.Request {
		r := httptest.NewRequest("POST", "/ingest/sensor_001", nil)
		r.Header.Set("X-Device-Id", signed.DeviceID)
		r.Header.Set("Idempotency-Key", signed.IdempotencyKey)
		r.Header.Set("X-Device-Timestamp", signed.DeviceTimestamp)
		r.Header.Set("X-Iotgw-Seq", signed.Seq)
		r.Header.Set(forward.TimestampHeader, fmt.Sprint(ts))
		r.Header.Set(forward.SignatureHeader, forward.Sign(key, forward.SchemeV2, "POST", "/ingest/sensor_001", signed, ts, body))
		return r
	}
	now := time.Unix(ts, 0)
	tests := []struct {
		name string
		edit func(r *http.Request) (*http.Request, []byte, time.Time)
		want error
	}{
		{"genuine", func(r *http.Request) (*http.Request, []byte, time.Time) { return r, body, now }, nil},
		{"genuine, 4 min late", func(r *http.Request) (*http.Request, []byte, time.Time) { return r, body, now.Add(4 * time.Minute) }, nil},
		{"tampered body", func(r *http.Request) (*http.Request, []byte, time.Time) {
			return r, []byte(`{"temperature":99.5}`), now
		}, forward.ErrSignatureInvalid},
		{"tampered device id", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Device-Id", "sensor_002")
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"tampered idempotency key", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("Idempotency-Key", "650e8400-e29b-41d4-a716-446655440000")
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"other path", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r2 := httptest.NewRequest("POST", "/ingest/sensor_002", nil)
			r2.Header = r.Header
			return r2, body, now
		}, forward.ErrSignatureInvalid},
		{"other method", func(r *http.Request) (*http.Request, []byte, time.Time) { r.Method = "PUT"; return r, body, now }, forward.ErrSignatureInvalid},
		{"timestamp header moved, signature kept", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(forward.TimestampHeader, fmt.Sprint(ts+1))
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"replayed 6 min later", func(r *http.Request) (*http.Request, []byte, time.Time) { return r, body, now.Add(6 * time.Minute) }, forward.ErrSignatureStale},
		{"from 6 min in the future", func(r *http.Request) (*http.Request, []byte, time.Time) { return r, body, now.Add(-6 * time.Minute) }, forward.ErrSignatureStale},
		{"wrong key", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(forward.SignatureHeader, forward.Sign([]byte(testKey[1:]+"0"), forward.SchemeV2, "POST", "/ingest/sensor_001", signed, ts, body))
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"no signature", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Del(forward.SignatureHeader)
			return r, body, now
		}, forward.ErrSignatureMissing},
		{"no timestamp", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Del(forward.TimestampHeader)
			return r, body, now
		}, forward.ErrSignatureMissing},
		{"uppercase hex", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(forward.SignatureHeader, "v2="+strings.ToUpper(strings.TrimPrefix(r.Header.Get(forward.SignatureHeader), "v2=")))
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"unknown version", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(forward.SignatureHeader, "v3="+strings.TrimPrefix(r.Header.Get(forward.SignatureHeader), "v2="))
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"v2 digits relabelled v1", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(forward.SignatureHeader, "v1="+strings.TrimPrefix(r.Header.Get(forward.SignatureHeader), "v2="))
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"genuine v1 signature, v2 expected (downgrade)", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(forward.SignatureHeader, forward.Sign(key, forward.SchemeV1, "POST", "/ingest/sensor_001", signed, ts, body))
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"tampered X-Device-Timestamp", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Device-Timestamp", "1")
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"tampered X-Iotgw-Seq", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Iotgw-Seq", "999999")
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"X-Iotgw-Seq removed", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Del("X-Iotgw-Seq")
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"second X-Iotgw-Seq header", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Add("X-Iotgw-Seq", "43")
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"timestamp with a sign", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set(forward.TimestampHeader, "+"+fmt.Sprint(ts))
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"second device id header", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Add("X-Device-Id", "sensor_002")
			return r, body, now
		}, forward.ErrSignatureInvalid},
		// X-Message-Id is not in the signing bytes: it must repeat the
		// signed Idempotency-Key, or a captured request replays with a new
		// message id under the same signature.
		{"X-Message-Id same as Idempotency-Key", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Message-Id", "550e8400-e29b-41d4-a716-446655440000")
			return r, body, now
		}, nil},
		{"tampered X-Message-Id", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Message-Id", "650e8400-e29b-41d4-a716-446655440000")
			return r, body, now
		}, forward.ErrSignatureInvalid},
		{"second X-Message-Id header", func(r *http.Request) (*http.Request, []byte, time.Time) {
			r.Header.Set("X-Message-Id", "550e8400-e29b-41d4-a716-446655440000")
			r.Header.Add("X-Message-Id", "650e8400-e29b-41d4-a716-446655440000")
			return r, body, now
		}, forward.ErrSignatureInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, b, at := tc.edit(good())
			err := forward.VerifyRequest(key, forward.SchemeV2, r, b, at, 5*time.Minute)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("VerifyRequest = %v, want %v", err, tc.want)
			}
		})
	}
	// What v1 leaves unsigned, and why v2 is the default: a v1 verifier
	// takes a changed X-Iotgw-Seq or X-Device-Timestamp.
	r := good()
	r.Header.Set(forward.SignatureHeader, forward.Sign(key, forward.SchemeV1, "POST", "/ingest/sensor_001", signed, ts, body))
	r.Header.Set("X-Iotgw-Seq", "999999")
	r.Header.Set("X-Device-Timestamp", "1")
	if err := forward.VerifyRequest(key, forward.SchemeV1, r, body, now, 5*time.Minute); err != nil {
		t.Fatalf("v1 verifier on changed unsigned headers: %v, want nil (v1 does not cover them)", err)
	}
	if err := forward.VerifyRequest(key, "v3", good(), body, now, 5*time.Minute); err == nil {
		t.Fatal("VerifyRequest with scheme v3: nil, want an error")
	}
}

// TestClientMutualTLS: against a server that requires a client
// certificate from our CA, a Client without one is refused (retryable, so
// the message stays queued) and one with it is answered; a server below
// TLS 1.2 or not signed by backend.ca_file is refused.
func TestClientMutualTLS(t *testing.T) {
	dir := t.TempDir()
	if err := pki.Init(dir, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	p := pki.Paths(dir)
	serverCert, err := tls.LoadX509KeyPair(p.BrokerCert, p.BrokerKey) // valid for 127.0.0.1
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(p.CACert)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	start := func(t *testing.T, edit func(*tls.Config)) *httptest.Server {
		srv := httptest.NewUnstartedServer(reply(200, `{"ok":true}`))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
		if edit != nil {
			edit(srv.TLS)
		}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		return srv
	}
	other := t.TempDir()
	if err := pki.Init(other, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	mtls := start(t, nil)
	old := start(t, func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 })
	tests := []struct {
		name string
		url  string
		edit func(*forward.Config)
		ok   bool
	}{
		{"client certificate", mtls.URL, func(c *forward.Config) { c.CAFile, c.CertFile, c.KeyFile = p.CACert, p.GatewayCert, p.GatewayKey }, true},
		{"no client certificate", mtls.URL, func(c *forward.Config) { c.CAFile = p.CACert }, false},
		{"server not from backend.ca_file", mtls.URL, func(c *forward.Config) {
			c.CAFile, c.CertFile, c.KeyFile = pki.Paths(other).CACert, p.GatewayCert, p.GatewayKey
		}, false},
		{"no ca_file: system roots do not know our CA", mtls.URL, func(c *forward.Config) { c.CertFile, c.KeyFile = p.GatewayCert, p.GatewayKey }, false},
		{"server offers TLS 1.1 at most", old.URL, func(c *forward.Config) { c.CAFile, c.CertFile, c.KeyFile = p.CACert, p.GatewayCert, p.GatewayKey }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := forward.DefaultConfig()
			cfg.URL = tc.url + "/ingest/{device_id}"
			tc.edit(&cfg)
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			c, err := forward.NewClient(cfg)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := c.Post(context.Background(), testJob())
			if tc.ok {
				if err != nil || resp.Status != 200 {
					t.Fatalf("Post = %d, %v; want 200", resp.Status, err)
				}
				return
			}
			var re *forward.RetryableError
			if !errors.As(err, &re) {
				t.Fatalf("Post = %d, %v; want a *RetryableError", resp.Status, err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// TestClientUnauthorizedIsRetryable: a 401 means the backend refused the
// gateway's credentials (a wrong token or key, a clock off), not the
// message: it is retried, never settled and deleted.
func TestClientUnauthorizedIsRetryable(t *testing.T) {
	srv, _ := backend(t, reply(401, "who are you"))
	_, err := clientFor(srv.URL, nil).Post(context.Background(), testJob())
	var re *forward.RetryableError
	if !errors.As(err, &re) || re.Status != 401 {
		t.Fatalf("Post: %v, want a *RetryableError with status 401", err)
	}
}

// TestSecretsNotInErrors: neither the token nor the key appears in the
// errors a failing Client returns (transport failure, redirect whose
// Location carries a query).
func TestSecretsNotInErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String() + "/ingest"
	ln.Close()
	redir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://127.0.0.1:1/x?token="+r.Header.Get("Authorization"), http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redir.Close)
	for _, u := range []string{refused, redir.URL} {
		c := clientFor(u, func(c *forward.Config) {
			c.BearerTokenFile = secretFile(t, "token", testToken, 0o600)
			c.SigningKeyFile = secretFile(t, "key", testKey, 0o600)
		})
		_, err := c.Post(context.Background(), testJob())
		if err == nil {
			t.Fatalf("%s: no error", u)
		}
		if strings.Contains(err.Error(), testToken) || strings.Contains(err.Error(), testKey) {
			t.Errorf("%s: error %q leaks a secret", u, err)
		}
	}
}

// TestSchemeWarning: signing under v1 is warned about at start; v2, or no
// signature at all, is not.
func TestSchemeWarning(t *testing.T) {
	cfg := forward.DefaultConfig()
	if w := cfg.SchemeWarning(); w != "" {
		t.Errorf("no signing key: %q", w)
	}
	cfg.SigningKeyFile = "/k"
	if w := cfg.SchemeWarning(); w != "" {
		t.Errorf("default scheme: %q", w)
	}
	cfg.SignatureScheme = forward.SchemeV1
	if w := cfg.SchemeWarning(); !strings.Contains(w, "X-Iotgw-Seq") || strings.Contains(w, "\n") {
		t.Errorf("v1: %q, want one line naming what is unsigned", w)
	}
}

func TestPlaintextWarning(t *testing.T) {
	tests := []struct {
		url, batchURL string
		private       string // backend.private_network_host
		warn          string // "" for none; else a substring
	}{
		{"http://127.0.0.1:8080/ingest/{device_id}", "", "", ""},
		{"http://127.3.4.5/ingest", "", "", ""},
		{"http://[::1]:8080/ingest", "", "", ""},
		{"http://localhost:8080/ingest", "", "", ""},
		{"http://LocalHost/ingest", "", "", ""},
		{"https://backend.example/ingest", "", "", ""},
		{"https://10.0.0.1/ingest", "", "", ""},
		{"http://backend.example/ingest", "", "", `"backend.example"`},
		{"http://user:hunter2@10.0.0.1:8080/ingest", "", "", `"10.0.0.1"`},
		{"http://[2001:db8::1]/ingest", "", "", `"2001:db8::1"`},
		{"http://localhost.example.com/ingest", "", "", `"localhost.example.com"`},
		{"http://128.0.0.1/ingest", "", "", `"128.0.0.1"`},
		{"https://backend.example/ingest", "http://batch.example/batch", "", "backend.batch_url"},
		{"http://127.0.0.1/ingest", "http://[::1]/batch", "", ""},
		// The compose stack's backend, acknowledged as on its private network.
		{"http://backend:8080/ingest/{device_id}", "", "backend", ""},
		{"http://BACKEND:8080/ingest", "", "backend", ""},
		// The acknowledgement covers its one host, never another.
		{"http://backend.example/ingest", "", "backend", `"backend.example"`},
		{"http://backend:8080/ingest", "http://batch.example/batch", "backend", "backend.batch_url"},
		{"http://10.0.0.1/ingest", "", "backend", `"10.0.0.1"`},
	}
	for _, tc := range tests {
		t.Run(tc.url+" "+tc.batchURL+" "+tc.private, func(t *testing.T) {
			cfg := forward.DefaultConfig()
			cfg.URL, cfg.PrivateNetworkHost = tc.url, tc.private
			if tc.batchURL != "" {
				cfg.BatchMax, cfg.BatchURL = 4, tc.batchURL
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			w := cfg.PlaintextWarning()
			switch {
			case tc.warn == "" && w != "":
				t.Errorf("warning %q for a loopback or https backend", w)
			case tc.warn != "" && !strings.Contains(w, tc.warn):
				t.Errorf("warning %q, want one containing %q", w, tc.warn)
			case strings.Contains(w, "\n") || strings.Contains(w, "hunter2") || strings.Contains(w, "user"):
				t.Errorf("warning %q is not one line without credentials", w)
			}
		})
	}
}

// FuzzVerifyRequest: VerifyRequest never panics, and it accepts only a
// request whose signature is exactly Sign, under the scheme expected,
// over what it received.
func FuzzVerifyRequest(f *testing.F) {
	f.Add(true, "/ingest/sensor_001", "sensor_001", "550e8400-e29b-41d4-a716-446655440000", "", "", "1727712005",
		"v1=08b194b1616266afd6734c288244579cea3e437cc2f2ce2868bae66744b5c66f", []byte(`{"temperature":22.5}`))
	f.Add(true, "/batch", "", "", "", "", "1727712005", "v1=b29420544fa28c15df27096d91328189c9f1f444b1ebb958d20aacc2ca9d5dae", []byte(`[]`))
	f.Add(false, "/ingest/sensor_001", "sensor_001", "550e8400-e29b-41d4-a716-446655440000", "1727712000", "42", "1727712005",
		"v2=", []byte(`{"temperature":22.5}`))
	f.Add(false, "/x?y=1", "d", "k", "1", "2", "01", "v2=", []byte{})
	key := []byte("6b2f0f4e1c9a8d7e5b3a29f1c0d4e8b7a6f5e4d3c2b1a09f8e7d6c5b4a392817")
	f.Fuzz(func(t *testing.T, v1 bool, target, dev, idem, dts, seq, ts, sig string, body []byte) {
		if !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \r\n#") {
			return
		}
		r, err := http.NewRequest("POST", "http://127.0.0.1"+target, nil)
		if err != nil {
			return
		}
		for k, v := range map[string]string{"X-Device-Id": dev, "Idempotency-Key": idem, "X-Device-Timestamp": dts,
			"X-Iotgw-Seq": seq, forward.TimestampHeader: ts, forward.SignatureHeader: sig} {
			if v != "" {
				r.Header[k] = []string{v}
			}
		}
		scheme := forward.SchemeV2
		if v1 {
			scheme = forward.SchemeV1
		}
		if forward.VerifyRequest(key, scheme, r, body, time.Unix(1727712005, 0), 100*365*24*time.Hour) != nil {
			return
		}
		n, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			t.Fatalf("accepted timestamp %q is not decimal: %v", ts, err)
		}
		h := forward.Signed{DeviceID: dev, IdempotencyKey: idem, DeviceTimestamp: dts, Seq: seq}
		if want := forward.Sign(key, scheme, "POST", r.URL.RequestURI(), h, n, body); sig != want {
			t.Fatalf("accepted %q, Sign gives %q", sig, want)
		}
	})
}
