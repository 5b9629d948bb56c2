package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/test/harness"
)

// fixture is one real deployment: Mosquitto with the project's config and
// ACL, a PKI made by pkg/pki, a registry, a recording HTTP backend and an
// `iotgw serve` process.
type fixture struct {
	t       *testing.T
	bin     string
	certs   string
	dir     string
	db      string
	broker  *harness.Broker
	backend *recorder
	secrets map[string]string
	// outboxPath overrides the outbox database location (disk-full test).
	outboxPath string
	// pgDSN, once set (usePostgres), is where devices are registered:
	// through the CLI, against the PostgreSQL registry.
	pgDSN string
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// fixtureClientID is the gateway's mqtt.client_id in every fixture.
const fixtureClientID = "iotgw:test"

func newFixture(t *testing.T, devices ...string) *fixture {
	t.Helper()
	f := &fixture{t: t, bin: harness.BuildIotgw(t), certs: harness.PKI(t), dir: t.TempDir(), secrets: map[string]string{}}
	f.db = filepath.Join(f.dir, "registry.db")
	f.broker = harness.StartMosquitto(t, f.certs)
	f.backend = newRecorder(t)
	for _, d := range devices {
		f.addDevice(d)
	}
	return f
}

// addDevice issues a certificate and registers the device with a fresh secret.
func (f *fixture) addDevice(id string) string {
	f.t.Helper()
	harness.IssueDevice(f.t, f.certs, id)
	if f.pgDSN != "" {
		secret, err := registry.NewSecret()
		if err != nil {
			f.t.Fatal(err)
		}
		f.pgCLI(secret+"\n", "device", "add", id, "--secret-stdin")
		f.secrets[id] = secret
		return secret
	}
	r, err := registry.Open(context.Background(), f.db)
	if err != nil {
		f.t.Fatal(err)
	}
	defer r.Close()
	secret, err := registry.NewSecret()
	if err != nil {
		f.t.Fatal(err)
	}
	if err := r.Add(context.Background(), id, secret); err != nil {
		f.t.Fatal(err)
	}
	f.secrets[id] = secret
	return secret
}

// usePostgres registers the fixture's devices, and those added later, in
// the PostgreSQL database dsn through the CLI (its registry has no file).
func (f *fixture) usePostgres(dsn string) {
	f.t.Helper()
	f.pgDSN = dsn
	for id, secret := range f.secrets {
		f.pgCLI(secret+"\n", "device", "add", id, "--secret-stdin")
	}
}

// pgCLI runs an iotgw command against the PostgreSQL registry f.pgDSN
// (IOTGW_STORAGE_ENGINE and IOTGW_STORAGE_DSN), failing the test if it fails.
func (f *fixture) pgCLI(stdin string, args ...string) string {
	f.t.Helper()
	cmd := exec.Command(f.bin, args...)
	cmd.Env = append(os.Environ(), "IOTGW_STORAGE_ENGINE=postgres", "IOTGW_STORAGE_DSN="+f.pgDSN)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		f.t.Fatalf("iotgw %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// config returns the gateway's YAML config; extra lines are appended under
// the named top-level sections by simple override keys (see gatewayOpts).
func (f *fixture) config(httpPort int, o gatewayOpts) string {
	backend := f.backend.URL + "/ingest/{device_id}"
	if o.backendURL != "" {
		backend = o.backendURL
	}
	grace := "10s"
	if o.grace != "" {
		grace = o.grace
	}
	return fmt.Sprintf(`mqtt:
  broker: %s
  client_id: %s
  ca_file: %s/ca.crt
  cert_file: %s/gateway.crt
  key_file: %s/gateway.key
  max_reconnect_interval: 2s
registry:
  path: %s
  refresh: 200ms
outbox:
  path: %s
  synchronous: normal
backend:
  url: %s
  timeout: %s
  backoff_initial: 50ms
  backoff_max: 1s
  breaker_cooldown: 500ms
  max_attempts: %d
%shttp:
  listen: 127.0.0.1:%d
  pprof: true
shutdown_grace: %s
%slog:
  level: debug
%s`, f.broker.GatewayAddr, fixtureClientID, f.certs, f.certs, f.certs, f.db, f.outbox(), backend, o.timeoutOr("5s"), o.attemptsOr(50), o.backendExtra, httpPort, grace, o.limitsOr(), o.extra)
}

func (f *fixture) outbox() string {
	if f.outboxPath != "" {
		return f.outboxPath
	}
	return filepath.Join(f.dir, "outbox.db")
}

type gatewayOpts struct {
	// backendExtra is appended to the backend section: indented YAML lines.
	backendExtra string
	maxAttempts  int
	backendURL   string
	timeout      string
	grace        string
	// extra is appended to the config: whole top-level sections.
	extra string
	// limits replaces the limits section: a whole "limits:\n  ..." block.
	limits string
	// edit, when set, rewrites the whole YAML config before it is written.
	edit func(cfg string) string
	// env is added to the gateway's environment (KEY=value).
	env []string
}

// limitsOr returns o.limits, or the limits the functional tests run with:
// the per-device rate limit and the notice limit off, because they stream
// thousands of messages from one device, or expect a notice for each of
// several rejections in a row, to test other things (TestFloodRateLimited
// and TestQuarantineAfterBadSignatures set their own).
func (o gatewayOpts) limitsOr() string {
	if o.limits != "" {
		return o.limits
	}
	return "limits:\n  device_rate: 0\n  notice_interval: 0s\n"
}

func (o gatewayOpts) attemptsOr(n int) int {
	if o.maxAttempts > 0 {
		return o.maxAttempts
	}
	return n
}

func (o gatewayOpts) timeoutOr(d string) string {
	if o.timeout != "" {
		return o.timeout
	}
	return d
}

// gatewayProc is a running `iotgw serve`.
type gatewayProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	http    string
	logPath string
	done    chan struct{}
	waitErr error
}

// startGateway starts `iotgw serve` and waits until /readyz says ready.
func (f *fixture) startGateway(o gatewayOpts) *gatewayProc {
	f.t.Helper()
	g := f.startGatewayNoWait(o)
	g.waitReady(15 * time.Second)
	return g
}

// startGatewayNoWait starts `iotgw serve` without waiting for /readyz.
func (f *fixture) startGatewayNoWait(o gatewayOpts) *gatewayProc {
	f.t.Helper()
	port := harness.FreePort(f.t)
	cfgPath := filepath.Join(f.dir, "iotgw.yaml")
	cfg := f.config(port, o)
	if o.edit != nil {
		cfg = o.edit(cfg)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		f.t.Fatal(err)
	}
	logPath := filepath.Join(f.dir, fmt.Sprintf("gateway-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		f.t.Fatal(err)
	}
	cmd := exec.Command(f.bin, "serve", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if o.env != nil {
		cmd.Env = append(os.Environ(), o.env...)
	}
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	g := &gatewayProc{t: f.t, cmd: cmd, http: fmt.Sprintf("127.0.0.1:%d", port), logPath: logPath, done: make(chan struct{})}
	go func() { g.waitErr = cmd.Wait(); logf.Close(); close(g.done) }()
	f.t.Cleanup(func() {
		g.kill()
		if f.t.Failed() {
			b, _ := os.ReadFile(logPath)
			f.t.Logf("gateway log %s (last 4 KiB):\n%s", logPath, lastBytes(b, 4096))
		}
	})
	return g
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (g *gatewayProc) waitReady(timeout time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-g.done:
			b, _ := os.ReadFile(g.logPath)
			g.t.Fatalf("gateway exited early: %v\n%s", g.waitErr, b)
		default:
		}
		resp, err := httpClient.Get("http://" + g.http + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body) // draining only
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.t.Fatalf("gateway not ready within %s", timeout)
}

// signal sends sig and waits for exit, returning the exit code.
func (g *gatewayProc) signal(sig syscall.Signal, timeout time.Duration) int {
	g.t.Helper()
	if err := g.cmd.Process.Signal(sig); err != nil {
		g.t.Fatalf("signal %s: %v", sig, err)
	}
	select {
	case <-g.done:
	case <-time.After(timeout):
		g.t.Fatalf("gateway did not exit within %s after %s", timeout, sig)
	}
	return g.cmd.ProcessState.ExitCode()
}

func (g *gatewayProc) kill() {
	select {
	case <-g.done:
	default:
		_ = g.cmd.Process.Kill() // it may be exiting already; done tells
		<-g.done
	}
}

// metric returns the value of one Prometheus series, e.g.
// `iotgw_messages_rejected_total{reason="replay"}`, or 0 when it is absent.
func (g *gatewayProc) metric(series string) float64 {
	g.t.Helper()
	v, _ := g.metricOK(series)
	return v
}

// metricOK is metric that also reports whether the series exists.
func (g *gatewayProc) metricOK(series string) (float64, bool) {
	g.t.Helper()
	resp, err := httpClient.Get("http://" + g.http + "/metrics")
	if err != nil {
		g.t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if name, val, ok := strings.Cut(sc.Text(), " "); ok && name == series {
			v, _ := strconv.ParseFloat(val, 64)
			return v, true
		}
	}
	return 0, false
}

// waitMetric waits until series reaches at least want.
func (g *gatewayProc) waitMetric(series string, want float64, timeout time.Duration) float64 {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	var v float64
	for time.Now().Before(deadline) {
		if v = g.metric(series); v >= want {
			return v
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.t.Fatalf("%s = %v, want ≥ %v after %s", series, v, want, timeout)
	return v
}

// recorder is the HTTP backend: it records every request and answers with
// what behave returns (200 by default).
type recorder struct {
	URL     string
	port    int
	handler http.Handler
	srv     *http.Server
	mu      sync.Mutex
	reqs    []recorded
	behave  func(r recorded) (status int, body string, delay time.Duration)
	// inflight counts requests being handled per X-Device-Id; maxInflight
	// is the most one device ever had at once.
	inflight    map[string]int
	maxInflight int
}

type recorded struct {
	Path   string
	Header http.Header
	Body   []byte
	At     time.Time
}

func newRecorder(t *testing.T) *recorder {
	rec := &recorder{port: harness.FreePort(t), inflight: map[string]int{}}
	rec.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/batch" {
			rec.batch(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		req := recorded{Path: r.URL.Path, Header: r.Header.Clone(), Body: body, At: time.Now()}
		dev := r.Header.Get("X-Device-Id")
		rec.mu.Lock()
		behave := rec.behave
		rec.inflight[dev]++
		rec.maxInflight = max(rec.maxInflight, rec.inflight[dev])
		rec.mu.Unlock()
		defer func() {
			rec.mu.Lock()
			rec.inflight[dev]--
			rec.mu.Unlock()
		}()
		status, out, delay := 200, `{"ok":true}`, time.Duration(0)
		if behave != nil {
			status, out, delay = behave(req)
		}
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		if status < 300 {
			rec.mu.Lock()
			rec.reqs = append(rec.reqs, req)
			rec.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, out) // a failed write shows on the gateway's side
	})
	rec.URL = fmt.Sprintf("http://127.0.0.1:%d", rec.port)
	rec.up(t)
	t.Cleanup(rec.down)
	return rec
}

// batch answers the gateway's batch mode: each item is recorded as if it
// had been POSTed alone (headers rebuilt from the item, Body the exact
// payload bytes) and answered 200 with {"item":<index>}.
func (rec *recorder) batch(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var items []struct {
		DeviceID  string          `json:"device_id"`
		MessageID string          `json:"message_id"`
		Timestamp json.Number     `json:"timestamp"`
		Payload   json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(body, &items); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	out := make([]string, len(items))
	rec.mu.Lock()
	for i, it := range items {
		h := http.Header{}
		h.Set("X-Device-ID", it.DeviceID)
		h.Set("X-Message-ID", it.MessageID)
		h.Set("X-Device-Timestamp", it.Timestamp.String())
		h.Set("X-Batch-Size", r.Header.Get("X-Batch-Size"))
		rec.reqs = append(rec.reqs, recorded{Path: r.URL.Path, Header: h, Body: it.Payload, At: time.Now()})
		out[i] = fmt.Sprintf(`{"status":200,"body":{"item":%d}}`, i)
	}
	rec.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, "["+strings.Join(out, ",")+"]") // as above
}

// up starts serving on the recorder's port (again, after down).
func (r *recorder) up(t *testing.T) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port may linger briefly after down
		if ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", r.port)); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	srv := &http.Server{Handler: r.handler}
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go func() { _ = srv.Serve(ln) }() // ErrServerClosed after down
}

// down stops the backend: connections are refused until up. Requests
// already being handled are answered first (a graceful stop), so no
// request is recorded whose answer the gateway never got; a backend that
// dies mid-answer is the at-least-once window of docs/RELIABILITY.md,
// which TestFaultKill9 covers from the gateway's side.
func (r *recorder) down() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	}
}

func (r *recorder) setBehave(f func(recorded) (int, string, time.Duration)) {
	r.mu.Lock()
	r.behave = f
	r.mu.Unlock()
}

// requests returns the requests answered 2xx so far.
func (r *recorder) requests() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.reqs...)
}

// waitCount waits until at least n requests were answered 2xx.
func (r *recorder) waitCount(t *testing.T, n int, timeout time.Duration) []recorded {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if reqs := r.requests(); len(reqs) >= n {
			return reqs
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("backend got %d requests, want %d within %s", len(r.requests()), n, timeout)
	return nil
}

// device is a Paho client with the device's certificate, collecting the
// replies published to its response topic.
type device struct {
	t       *testing.T
	id      string
	secret  string
	c       mqtt.Client
	replies chan reply
}

type reply struct {
	env   envelope.Envelope
	valid bool // signature verified with the device's downlink key
	raw   []byte
}

func (f *fixture) device(id string) *device {
	f.t.Helper()
	d := &device{t: f.t, id: id, secret: f.secrets[id], replies: make(chan reply, 10000)}
	d.c = harness.NewDeviceClient(f.t, f.broker, f.certs, id)
	tok := d.c.Subscribe("device/"+id+"/response", 1, func(_ mqtt.Client, m mqtt.Message) {
		raw := append([]byte(nil), m.Payload()...)
		e, err := envelope.Parse(raw, envelope.Limits{})
		r := reply{env: e, raw: raw}
		if err == nil && d.secret != "" {
			r.valid = envelope.Verify(envelope.NewDownlinkMAC([]byte(d.secret)), &e)
		}
		d.replies <- r
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		f.t.Fatalf("subscribe %s: %v", id, tok.Error())
	}
	return d
}

// publish sends raw bytes to topic (default: the device's own data topic).
func (d *device) publish(topic string, raw []byte) {
	d.t.Helper()
	if topic == "" {
		topic = "device/" + d.id + "/data"
	}
	tok := d.c.Publish(topic, 1, false, raw)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		d.t.Fatalf("publish: %v", tok.Error())
	}
}

// signed returns a signed message from this device with payload at ts.
func (d *device) signed(payload string, ts int64) (raw []byte, msgID string) {
	return signAs(d.id, d.secret, payload, ts)
}

func signAs(id, secret, payload string, ts int64) ([]byte, string) {
	msgID := string(envelope.NewMessageID())
	e := envelope.New([]byte(secret), id, ts, msgID, []byte(payload))
	return envelope.AppendJSON(nil, &e), msgID
}

// nextReply waits for the next reply.
func (d *device) nextReply(timeout time.Duration) (reply, bool) {
	select {
	case r := <-d.replies:
		return r, true
	case <-time.After(timeout):
		return reply{}, false
	}
}

// replyPayload decodes a reply's payload.
func replyPayload(t *testing.T, r reply) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.env.Payload, &m); err != nil {
		t.Fatalf("reply payload %q: %v", r.env.Payload, err)
	}
	return m
}

// runCLI runs the iotgw binary with stdin and returns its combined output.
func runCLI(bin, stdin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
