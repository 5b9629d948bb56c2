package perf

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/test/harness"
)

// gatewayClientID is the MQTT client id of the gateways the rig starts
// (GatewayOpts.ClientID sets another, for several at once). The gateway
// keeps a persistent session; Stop removes it, so no message is queued for
// a gateway that is not running.
const gatewayClientID = "iotgw:bench"

// stopTimeout bounds a gateway's graceful stop (its shutdown_grace is 10 s).
const stopTimeout = 30 * time.Second

var httpClient = &http.Client{Timeout: 30 * time.Second}

// Gateway is a running `iotgw serve` process.
type Gateway struct {
	// PID is the process id.
	PID int
	// HTTP is the operations endpoint, host:port.
	HTTP string
	// LogPath is the gateway's log (stdout and stderr).
	LogPath string
	// Registered is the number of devices in its registry.
	Registered int

	t        testing.TB
	rig      *Rig
	bin      string
	dir      string
	cfgPath  string
	clientID string
	cmd      *exec.Cmd
	done     chan struct{}
	waitErr  error
}

// gatewayConfig is the benchmark's gateway configuration: the durable
// defaults (outbox.synchronous full), log level warn, pprof on (for the
// heap measurements and for profiling a run), and every other key at its
// default, so that the benchmark measures what ships. GatewayOpts adds
// lines to the mqtt and backend sections and at the end.
const gatewayConfig = `mqtt:
  broker: %s
  client_id: %s
%s  ca_file: %s
  cert_file: %s
  key_file: %s
registry:
  path: %s
outbox:
  path: %s
  synchronous: full
backend:
  url: %s
%shttp:
  listen: 127.0.0.1:%d
  pprof: true
limits:
  device_rate: 0 # off: the benchmarks measure throughput, one device at up to thousands of msg/s; the limiter has its own tests
log:
  level: warn
security:
  kek_file: %s
  require_kek: true
%s`

// GatewayOpts is how one gateway differs from the benchmark's defaults.
type GatewayOpts struct {
	// Registered selects the registry of DeviceID(1..Registered).
	Registered int
	// Backend is backend.url.
	Backend string
	// ClientID is mqtt.client_id; "" is gatewayClientID. Gateways running
	// at once need distinct ones.
	ClientID string
	// MQTTExtra, BackendExtra and Extra are YAML lines added to the mqtt
	// section, to the backend section (indented) and at the top level.
	MQTTExtra, BackendExtra, Extra string
	// Bin is the gateway's binary; "" is the rig's (BenchmarkSteady's
	// BENCH_BASELINE runs an earlier build beside it).
	Bin string
}

// StartGateway starts `iotgw serve` with the registry of registered
// devices, a new outbox and backend as its backend.url, and waits until
// /readyz answers 200. The gateway is stopped when the test ends, and its
// log printed if the test failed.
func (r *Rig) StartGateway(t testing.TB, registered int, backend string) *Gateway {
	t.Helper()
	return r.StartGatewayWith(t, registered, backend, "")
}

// StartGatewayWith is StartGateway with backendExtra (indented YAML lines)
// added to the backend section, e.g. batch mode's keys.
func (r *Rig) StartGatewayWith(t testing.TB, registered int, backend, backendExtra string) *Gateway {
	t.Helper()
	return r.StartGatewayOpts(t, GatewayOpts{Registered: registered, Backend: backend, BackendExtra: backendExtra})
}

// StartGatewayOpts is StartGateway configured by o.
func (r *Rig) StartGatewayOpts(t testing.TB, o GatewayOpts) *Gateway {
	t.Helper()
	if o.ClientID == "" {
		o.ClientID = gatewayClientID
	}
	dir, err := os.MkdirTemp(r.Dir, "gateway-")
	if err != nil {
		t.Fatal(err)
	}
	port := harness.FreePort(t)
	files := pki.Paths(r.Certs)
	cfg := fmt.Sprintf(gatewayConfig, r.Broker.GatewayAddr, o.ClientID, o.MQTTExtra, files.CACert, files.GatewayCert, files.GatewayKey,
		r.Registry(t, o.Registered), filepath.Join(dir, "outbox.db"), o.Backend, o.BackendExtra, port, r.KEKFile, o.Extra)
	cfgPath := filepath.Join(dir, "iotgw.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &Gateway{HTTP: "127.0.0.1:" + strconv.Itoa(port), LogPath: filepath.Join(dir, "gateway.log"), Registered: o.Registered,
		t: t, rig: r, bin: cmp.Or(o.Bin, r.Bin), dir: dir, cfgPath: cfgPath, clientID: o.ClientID}
	t.Cleanup(func() {
		if err := g.Stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(g.LogPath)
			t.Logf("gateway log %s (last 4 KiB):\n%s", g.LogPath, lastBytes(b, 4096))
		}
	})
	if err := g.start(); err != nil {
		t.Fatal(err)
	}
	return g
}

// start starts the process, appending to its log, and waits until ready.
func (g *Gateway) start() error {
	logf, err := os.OpenFile(g.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(g.bin, "serve", "--config", g.cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start gateway: %w", err)
	}
	g.cmd, g.PID, g.done = cmd, cmd.Process.Pid, make(chan struct{})
	done := g.done
	go func() { g.waitErr = cmd.Wait(); logf.Close(); close(done) }()
	return g.waitReady(30 * time.Second)
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (g *Gateway) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-g.done:
			b, _ := os.ReadFile(g.LogPath)
			return fmt.Errorf("gateway exited at start: %w\n%s", g.waitErr, lastBytes(b, 4096))
		default:
		}
		if resp, err := httpClient.Get("http://" + g.HTTP + "/readyz"); err == nil {
			io.Copy(io.Discard, resp.Body) //nolint:errcheck
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("gateway not ready within %v", timeout)
}

// Stop stops the gateway gracefully (SIGTERM; SIGKILL after stopTimeout),
// removes its persistent session from the broker and its files. Stopping
// a stopped gateway does nothing.
func (g *Gateway) Stop() error {
	if g.cmd == nil {
		return nil
	}
	var errs []error
	if err := g.terminate(); err != nil {
		errs = append(errs, err)
	}
	if err := g.rig.dropSession(g.t, g.clientID); err != nil {
		errs = append(errs, err)
	}
	if !g.t.Failed() {
		if err := removeAll(g.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// terminate sends SIGTERM and waits for the exit (SIGKILL after
// stopTimeout).
func (g *Gateway) terminate() error {
	defer func() { g.cmd = nil }()
	select {
	case <-g.done:
		return fmt.Errorf("gateway had exited by itself: %w", g.waitErr)
	default:
	}
	g.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	select {
	case <-g.done:
		if g.waitErr != nil {
			return fmt.Errorf("gateway exit: %w", g.waitErr)
		}
		return nil
	case <-time.After(stopTimeout):
		g.cmd.Process.Kill() //nolint:errcheck
		<-g.done
		return fmt.Errorf("gateway ignored SIGTERM for %v", stopTimeout)
	}
}

// dropSession connects with a gateway's client id and a clean session,
// which makes the broker discard the gateway's persistent session, and
// disconnects.
func (r *Rig) dropSession(t testing.TB, clientID string) error {
	cfg := harness.TLSConfig(t, r.Certs, pki.GatewayIdentity)
	opts := mqtt.NewClientOptions().AddBroker(r.Broker.GatewayAddr).SetClientID(clientID).SetTLSConfig(cfg).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(harness.ConnectTimeout)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(harness.ConnectTimeout+time.Second) || tok.Error() != nil {
		return fmt.Errorf("drop the gateway's session: %w", tok.Error())
	}
	c.Disconnect(100)
	return nil
}

// CPU returns the gateway's user + system CPU time so far.
func (g *Gateway) CPU() time.Duration {
	d, err := procCPU(g.PID)
	if err != nil {
		g.t.Fatal(err)
	}
	return d
}

// RSS returns the gateway's resident set size in bytes.
func (g *Gateway) RSS() int64 {
	n, err := procRSS(g.PID)
	if err != nil {
		g.t.Fatal(err)
	}
	return n
}

// Heap returns the gateway's live heap in bytes: runtime.MemStats.HeapAlloc
// right after a garbage collection, which /debug/pprof/heap?gc=1 runs.
func (g *Gateway) Heap() int64 {
	resp, err := httpClient.Get("http://" + g.HTTP + "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		g.t.Fatalf("gateway heap: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapAlloc = "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				g.t.Fatalf("gateway heap: %v", err)
			}
			return n
		}
	}
	g.t.Fatalf("gateway heap: no HeapAlloc in the heap profile (%v)", sc.Err())
	return 0
}

// Metrics returns every series of /metrics, keyed by name and labels as
// printed (iotgw_forward_total{result="ok"}).
func (g *Gateway) Metrics() map[string]float64 {
	resp, err := httpClient.Get("http://" + g.HTTP + "/metrics")
	if err != nil {
		g.t.Fatalf("gateway metrics: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				out[line[:i]] = v
			}
		}
	}
	return out
}

// WaitSettled waits until the gateway has nothing pending: no outbox row
// and nothing queued for the backend.
func (g *Gateway) WaitSettled(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		m := g.Metrics()
		if m["iotgw_outbox_pending"] == 0 && m["iotgw_forward_queue"] == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gateway not settled after %v: outbox_pending %v, forward_queue %v",
				timeout, m["iotgw_outbox_pending"], m["iotgw_forward_queue"])
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// LogLines counts the gateway's log lines by level and message (the
// benchmark runs it at level warn, so every line is worth a look).
func (g *Gateway) LogLines() map[LogLine]int {
	out := map[LogLine]int{}
	b, err := os.ReadFile(g.LogPath)
	if err != nil {
		out[LogLine{Level: "unreadable", Msg: err.Error()}]++
		return out
	}
	for line := range bytes.Lines(b) {
		var l LogLine
		if json.Unmarshal(line, &l) != nil {
			l = LogLine{Level: "unparsed", Msg: string(bytes.TrimSpace(line))}
		}
		out[l]++
	}
	return out
}

// LogLine is a gateway log line's level and message.
type LogLine struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
}
