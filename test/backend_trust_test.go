package test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/backendsig"
	"github.com/iotgw/iotgw/pkg/pki"
)

// Backend trust (issue 9, part 2): the gateway proves itself to the
// backend with a bearer token, an HMAC request signature and a TLS client
// certificate. These tests run a real `iotgw serve` against a real
// `iotgw backend` (token and signature) and an https backend that
// requires a client certificate.

const (
	trustToken = "e2e-token-7d1c0a9b8e2f4c6a"
	trustKey   = "3c9b1f0e7a2d4c8b6e5f1a0d9c8b7e6f5a4d3c2b1e0f9a8b7c6d5e4f3a2b1c0d"
)

func writeSecret(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// sampleBackend is a running `iotgw backend`.
type sampleBackend struct {
	URL string
	// token and key, when set, authenticate the control requests (/stats):
	// the backend asks of them what it asks of a delivery.
	token, key string
	mu         sync.Mutex
	stderr     strings.Builder
}

func (b *sampleBackend) errLog() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stderr.String()
}

// startSampleBackend starts `iotgw backend` on a free loopback port with
// args and returns it once it listens.
func startSampleBackend(t *testing.T, bin string, args ...string) *sampleBackend {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"backend", "--listen", "127.0.0.1:0"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("kill iotgw backend: %v", err)
		}
		_ = cmd.Wait() // "signal: killed": the kill above
	})
	b := &sampleBackend{}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			b.mu.Lock()
			b.stderr.WriteString(sc.Text() + "\n")
			b.mu.Unlock()
		}
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "backend listening on "); ok {
				addr <- a
			}
		}
		// Keep draining so the child never blocks on a full pipe; an error
		// means the pipe is gone and there is nothing left to drain.
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case b.URL = <-addr:
	case <-time.After(10 * time.Second):
		t.Fatalf("iotgw backend did not start: %s", b.errLog())
	}
	return b
}

// stats returns the sample backend's GET /stats.
func (b *sampleBackend) stats(t *testing.T, msgID string) (s struct {
	OK           int  `json:"ok"`
	Unauthorized int  `json:"unauthorized"`
	MessageOK    *int `json:"message_ok"`
}) {
	t.Helper()
	target := "/stats?message_id=" + msgID
	req, err := http.NewRequest(http.MethodGet, b.URL+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.token != "" {
		req.Header.Set("Authorization", "Bearer "+b.token)
	}
	if b.key != "" {
		ts := time.Now().Unix()
		req.Header.Set(backendsig.TimestampHeader, strconv.FormatInt(ts, 10))
		req.Header.Set(backendsig.SignatureHeader, backendsig.Sign([]byte(b.key), backendsig.SchemeV2, http.MethodGet, target, backendsig.Signed{}, ts, nil))
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func readLog(t *testing.T, g *gatewayProc) string {
	t.Helper()
	b, err := os.ReadFile(g.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBackendTrustSignedAndBearer: the sample backend requires the bearer
// token and the v1 signature. A gateway signing with the wrong key is
// refused with 401 and a log line naming the reason; the message is
// retried, not dropped; restarted with the right key, the gateway delivers
// it once. Neither the token nor the key appears in the gateway's log or
// metrics, and a loopback http backend gets no plaintext warning.
func TestBackendTrustSignedAndBearer(t *testing.T) {
	f := newFixture(t, "trust_dev")
	tokenFile := writeSecret(t, f.dir, "backend-token", trustToken)
	keyFile := writeSecret(t, f.dir, "backend-signing.key", trustKey)
	wrongKey := writeSecret(t, f.dir, "wrong-signing.key", strings.Repeat("0", 64))
	be := startSampleBackend(t, f.bin, "--bearer-token-file", tokenFile, "--signing-key-file", keyFile)
	be.token, be.key = trustToken, trustKey
	opts := func(key string) gatewayOpts {
		return gatewayOpts{backendURL: be.URL + "/ingest/{device_id}",
			backendExtra: "  bearer_token_file: " + tokenFile + "\n  signing_key_file: " + key + "\n"}
	}

	g := f.startGateway(opts(wrongKey))
	d := f.device("trust_dev")
	raw, msgID := d.signed(`{"t":1}`, time.Now().Unix())
	d.publish("", raw)
	g.waitMetric(`iotgw_forward_total{result="retry"}`, 2, 15*time.Second)
	if s := be.stats(t, msgID); s.OK != 0 || s.Unauthorized < 2 {
		t.Fatalf("wrong key: backend ok=%d unauthorized=%d, want 0 and ≥ 2", s.OK, s.Unauthorized)
	}
	if l := be.errLog(); !strings.Contains(l, "401") || !strings.Contains(l, "bad signature") || !strings.Contains(l, `"trust_dev"`) {
		t.Errorf("backend log does not say why it refused:\n%s", l)
	}
	metrics := httpGet(t, "http://"+g.http+"/metrics")
	if code := g.signal(syscall.SIGTERM, 15*time.Second); code != 0 {
		t.Fatalf("gateway exit %d", code)
	}
	logs := readLog(t, g)

	// (Replies to rows pending at start: TestReplyForRowsPendingAtStart.)
	g = f.startGateway(opts(keyFile))
	g.waitMetric(`iotgw_forward_total{result="ok"}`, 1, 15*time.Second)
	if s := be.stats(t, msgID); s.MessageOK == nil || *s.MessageOK != 1 {
		t.Fatalf("backend delivered %v times, want once", s.MessageOK)
	}
	logs += readLog(t, g)
	for _, secret := range []string{trustToken, trustKey} {
		if strings.Contains(logs, secret) || strings.Contains(metrics, secret) {
			t.Errorf("a secret appears in the gateway's log or metrics")
		}
	}
	if strings.Contains(logs, "plain http") {
		t.Errorf("plaintext warning for a loopback backend")
	}
}

// TestBackendTrustMutualTLS: an https backend that requires a client
// certificate from our CA. A gateway without backend.cert_file is refused
// (retried, not delivered); with it, the same message is delivered. A
// plain-http backend that is not loopback is warned about at start.
func TestBackendTrustMutualTLS(t *testing.T) {
	f := newFixture(t, "mtls_dev")
	files := pki.Paths(f.certs)
	serverCert, err := tls.LoadX509KeyPair(files.BrokerCert, files.BrokerKey) // valid for 127.0.0.1
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	var mu sync.Mutex
	var got []string // X-Message-Id of requests that passed the handshake
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			t.Errorf("backend: read body: %v", err)
		}
		mu.Lock()
		got = append(got, r.Header.Get("X-Message-Id"))
		mu.Unlock()
		if _, err := io.WriteString(w, `{"ok":true}`); err != nil {
			t.Errorf("backend: reply: %v", err)
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	received := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), got...) }

	// A non-loopback http backend: warned about at start (nothing is sent:
	// no message is published to this gateway; .invalid never resolves).
	g := f.startGateway(gatewayOpts{backendURL: "http://backend.invalid:8080/ingest/{device_id}"})
	g.signal(syscall.SIGTERM, 15*time.Second)
	if l := readLog(t, g); strings.Count(l, "plain http://") != 1 || !strings.Contains(l, `\"backend.invalid\"`) {
		t.Errorf("want one plaintext warning naming the host, log:\n%s", l)
	}

	url := srv.URL + "/ingest/{device_id}"
	g = f.startGateway(gatewayOpts{backendURL: url, backendExtra: "  ca_file: " + files.CACert + "\n"})
	d := f.device("mtls_dev")
	raw, msgID := d.signed(`{"t":2}`, time.Now().Unix())
	d.publish("", raw)
	g.waitMetric(`iotgw_forward_total{result="retry"}`, 2, 15*time.Second)
	if n := len(received()); n != 0 {
		t.Fatalf("backend got %d requests from a gateway without a client certificate", n)
	}
	// Under TLS 1.3 the client sends its request before it reads the
	// server's alert, so the error it logs is either the alert or the
	// broken connection that follows it: a write into it (broken pipe), a
	// reset, or a read that finds it closed (EOF; seen in CI once).
	if l := readLog(t, g); !strings.Contains(l, "certificate required") && !strings.Contains(l, "broken pipe") &&
		!strings.Contains(l, "connection reset by peer") && !strings.Contains(l, "EOF") {
		t.Errorf("gateway log names neither the backend's certificate alert nor the connection it closed")
	}
	g.signal(syscall.SIGTERM, 15*time.Second)

	g = f.startGateway(gatewayOpts{backendURL: url,
		backendExtra: "  ca_file: " + files.CACert + "\n  cert_file: " + files.GatewayCert + "\n  key_file: " + files.GatewayKey + "\n"})
	g.waitMetric(`iotgw_forward_total{result="ok"}`, 1, 15*time.Second)
	if ids := received(); len(ids) != 1 || ids[0] != msgID {
		t.Fatalf("backend got %v, want [%s]", ids, msgID)
	}
	if strings.Contains(readLog(t, g), "plain http") {
		t.Error("plaintext warning for an https backend")
	}
}

// TestBackendSignatureCoversEveryHeader: someone on the backend's network
// (here a rewriting proxy on loopback between the gateway and the sample
// backend) changes X-Iotgw-Seq and X-Device-Timestamp of a signed POST.
// The signature (scheme v2) covers both, so the backend refuses the
// request with 401 and the gateway retries it; once the proxy stops
// rewriting, the message is delivered once, with the gateway's headers.
// Under v1 neither header was signed and the backend took the forged
// values.
func TestBackendSignatureCoversEveryHeader(t *testing.T) {
	f := newFixture(t, "hdr_dev")
	keyFile := writeSecret(t, f.dir, "backend-signing.key", trustKey)
	be := startSampleBackend(t, f.bin, "--signing-key-file", keyFile)
	be.key = trustKey
	target, err := url.Parse(be.URL)
	if err != nil {
		t.Fatal(err)
	}
	var tamper atomic.Bool
	tamper.Store(true)
	var tampered atomic.Int64
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		if tamper.Load() {
			r.Out.Header.Set("X-Iotgw-Seq", "999999")
			r.Out.Header.Set("X-Device-Timestamp", "1")
			tampered.Add(1)
		}
	}}
	proxy := httptest.NewServer(rp)
	defer proxy.Close()
	g := f.startGateway(gatewayOpts{backendURL: proxy.URL + "/ingest/{device_id}",
		backendExtra: "  signing_key_file: " + keyFile + "\n"})
	d := f.device("hdr_dev")
	raw, msgID := d.signed(`{"t":1}`, time.Now().Unix())
	d.publish("", raw)
	g.waitMetric(`iotgw_forward_total{result="retry"}`, 2, 15*time.Second)
	if s := be.stats(t, msgID); s.OK != 0 || s.Unauthorized < 2 {
		t.Fatalf("rewritten headers: backend ok=%d unauthorized=%d (%d requests rewritten), want 0 and ≥ 2", s.OK, s.Unauthorized, tampered.Load())
	}
	if l := be.errLog(); !strings.Contains(l, "bad signature") {
		t.Errorf("backend log does not say why it refused:\n%s", l)
	}
	tamper.Store(false)
	g.waitMetric(`iotgw_forward_total{result="ok"}`, 1, 30*time.Second)
	if s := be.stats(t, msgID); s.MessageOK == nil || *s.MessageOK != 1 {
		t.Fatalf("backend delivered %v times once the proxy stopped rewriting, want once", s.MessageOK)
	}
}
