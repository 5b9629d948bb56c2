package forward_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/backendsig"
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
		{"signature scheme v1", func(c *forward.Config) { c.SigningKeyFile, c.SignatureScheme = key, backendsig.SchemeV1 }, ""},
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
		if got := r.header.Get(backendsig.TimestampHeader); got != "1727712005" {
			t.Errorf("%s: %s %q, want the client clock's 1727712005", what, backendsig.TimestampHeader, got)
		}
		if got := r.header.Get(backendsig.SignatureHeader); !strings.HasPrefix(got, "v2=") {
			t.Errorf("%s: %s %q, want the default scheme v2", what, backendsig.SignatureHeader, got)
		}
		if err := backendsig.VerifyRequest([]byte(testKey), backendsig.SchemeV2, asHTTP(t, r), r.body, now, time.Minute); err != nil {
			t.Errorf("%s: VerifyRequest: %v", what, err)
		}
		if err := backendsig.VerifyRequest([]byte(testKey+"x"), backendsig.SchemeV2, asHTTP(t, r), r.body, now, time.Minute); !errors.Is(err, backendsig.ErrSignatureInvalid) {
			t.Errorf("%s: VerifyRequest with another key: %v, want ErrSignatureInvalid", what, err)
		}
	}

	v1 := clientFor(srv.URL+"/ingest/{device_id}", func(c *forward.Config) {
		c.SigningKeyFile = secretFile(t, "key", testKey+"\n", 0o600)
		c.SignatureScheme = backendsig.SchemeV1
	})
	forward.SetClientClock(v1, func() time.Time { return now })
	if _, err := v1.Post(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	r := <-reqs
	if err := backendsig.VerifyRequest([]byte(testKey), backendsig.SchemeV1, asHTTP(t, r), r.body, now, time.Minute); err != nil {
		t.Errorf("signature_scheme v1: VerifyRequest v1: %v", err)
	}
	if err := backendsig.VerifyRequest([]byte(testKey), backendsig.SchemeV2, asHTTP(t, r), r.body, now, time.Minute); !errors.Is(err, backendsig.ErrSignatureInvalid) {
		t.Errorf("signature_scheme v1: a v2 verifier said %v, want ErrSignatureInvalid", err)
	}

	plain := clientFor(srv.URL+"/ingest/{device_id}", nil)
	if _, err := plain.Post(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	r = <-reqs
	for _, h := range []string{"Authorization", backendsig.SignatureHeader, backendsig.TimestampHeader} {
		if v := r.header.Values(h); v != nil {
			t.Errorf("no trust settings, yet header %s: %q", h, v)
		}
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
	cfg.SignatureScheme = backendsig.SchemeV1
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
