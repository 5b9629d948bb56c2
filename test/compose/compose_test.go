// Package compose tests docker-compose.yml and the Dockerfile for real: the
// images are built, the stack is brought up, a device is provisioned the
// way the compose file's header says, and signed messages go from this
// host through the broker and the gateway to the backend and back.
//
// It needs a Docker engine (DOCKER_HOST, or the default socket) and
// docker-compose (v1) or the docker compose plugin. Without an engine it
// skips, loudly; with CI=true it fails instead. .ci/run starts an engine
// (scripts/docker-engine.sh). Base images that cannot be pulled are built
// locally by base-images.sh.
//
// All traffic stays on loopback: host-network.override.yml puts every
// service in the host's network namespace with its listeners on
// 127.0.0.1 and test ports; no bridge network is created.
package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.yaml.in/yaml/v3"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/test/harness"
)

// Bounds on each phase; the test stops by itself.
const (
	imagesTimeout = 15 * time.Minute // base images: debootstrap and apt, once per machine
	upTimeout     = 15 * time.Minute // build (cold: go mod download, cgo SQLite) and start
	cmdTimeout    = 2 * time.Minute  // any other compose command
	readyTimeout  = 90 * time.Second
	replyTimeout  = 10 * time.Second
)

const deviceID = "sensor_001"

// engine reports whether a Docker engine answers, and the compose command.
func engine(t *testing.T) (compose []string, why string) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		return nil, "no docker CLI in PATH"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "version", "--format", "{{.Server.Version}}").CombinedOutput()
	if err != nil {
		return nil, fmt.Sprintf("no Docker engine answers at DOCKER_HOST=%q: %v: %s", os.Getenv("DOCKER_HOST"), err, lastLine(out))
	}
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}, ""
	}
	if exec.CommandContext(ctx, "docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}, ""
	}
	return nil, "neither docker-compose nor the docker compose plugin is installed"
}

// stack is one compose project of the test.
type stack struct {
	t       *testing.T
	cmd     []string // docker-compose, or docker compose
	root    string   // the repository: the project directory
	file    string   // the effective compose file
	project string
	env     []string
}

// run runs a compose subcommand and returns its stdout; it fails the test
// with stderr when the command fails.
func (s *stack) run(timeout time.Duration, args ...string) string {
	s.t.Helper()
	out, err := s.try(timeout, args...)
	if err != nil {
		s.t.Fatalf("compose %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (s *stack) try(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append(append([]string{}, s.cmd[1:]...), "-p", s.project, "--project-directory", s.root, "-f", s.file)
	cmd := exec.CommandContext(ctx, s.cmd[0], append(full, args...)...)
	cmd.Dir = s.root
	cmd.Env = s.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, lastBytes(stderr.Bytes(), 4000))
	}
	return stdout.String(), nil
}

// container returns the id of service's container.
func (s *stack) container(service string) string {
	s.t.Helper()
	id := strings.TrimSpace(s.run(cmdTimeout, "ps", "-q", service))
	if id == "" {
		s.t.Fatalf("compose ps: no %s container", service)
	}
	return id
}

// health returns the container's health status ("healthy", "starting", ...).
func health(id string) string {
	out, err := exec.Command("docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}", id).Output()
	if err != nil {
		return "inspect: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}

func TestComposeStack(t *testing.T) {
	compose, why := engine(t)
	if compose == nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but the compose test cannot run: %s (.ci/run starts an engine with scripts/docker-engine.sh)", why)
		}
		t.Skipf("SKIPPED: docker-compose.yml and the Dockerfile are NOT tested: %s. Start an engine: eval \"$(scripts/docker-engine.sh start)\"", why)
	}
	root := harness.RepoRoot(t)
	start := time.Now()

	// Base images: present, pulled, or local stand-ins.
	ctx, cancel := context.WithTimeout(context.Background(), imagesTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, filepath.Join(root, "test/compose/base-images.sh")).CombinedOutput(); err != nil {
		t.Fatalf("base images: %v\n%s", err, out)
	}
	t.Logf("base images ready after %v", time.Since(start).Round(time.Second))

	// Loopback ports, and the project's mosquitto.conf with only its two
	// listener lines moved to them (paths stay the container's).
	devPort, gwPort, httpPort, backendPort := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	dir := harness.ReadableTempDir(t)
	orig, err := os.ReadFile(filepath.Join(root, "mosquitto/mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := loopbackListeners(orig, devPort, gwPort)
	if err != nil {
		t.Fatal(err)
	}
	confFile := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	goproxy, _ := exec.Command("go", "env", "GOPROXY").Output()
	s := &stack{t: t, cmd: compose, root: root, project: fmt.Sprintf("iotgwtest%d", os.Getpid()),
		env: append(os.Environ(),
			"DOCKER_BUILDKIT=0", "COMPOSE_DOCKER_CLI_BUILD=0",
			"IOTGWTEST_MOSQUITTO_CONF="+confFile,
			"IOTGWTEST_GATEWAY_PORT="+strconv.Itoa(gwPort),
			"IOTGWTEST_HTTP_PORT="+strconv.Itoa(httpPort),
			"IOTGWTEST_BACKEND_PORT="+strconv.Itoa(backendPort),
			"IOTGWTEST_GOPROXY="+strings.TrimSpace(string(goproxy)),
		)}
	s.file = effectiveFile(t, s, dir, devPort)

	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.try(cmdTimeout, "logs", "--no-color", "--tail", "60")
			t.Logf("compose logs:\n%s", out)
		}
		if out, err := s.try(cmdTimeout, "down", "-v", "--remove-orphans", "--timeout", "20"); err != nil {
			t.Errorf("compose down -v: %v\n%s", err, out)
		}
		// Untagged images from earlier runs built on the stand-ins (each
		// source change leaves about 1.3 GB); this run's are tagged.
		if out, err := exec.Command("docker", "image", "prune", "-f", "--filter", "label=iotgw.standin",
			"--filter", "until="+start.UTC().Format(time.RFC3339)).CombinedOutput(); err != nil {
			t.Logf("docker image prune: %v: %s", err, out)
		}
	})

	// The Dockerfile's build stage, tagged, so that it is not left dangling
	// (the cleanup prunes older untagged images built on the stand-ins);
	// compose's build below reuses its layers.
	bctx, bcancel := context.WithTimeout(context.Background(), upTimeout)
	defer bcancel()
	build := exec.CommandContext(bctx, "docker", "build", "-q", "--network", "host", "--target", "build",
		"--build-arg", "GOPROXY="+strings.TrimSpace(string(goproxy)), "-t", "iotgwtest/iotgw-build:local", root)
	build.Env = s.env
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build --target build: %v\n%s", lastBytes(out, 4000), err)
	}

	// up: build the image from the real Dockerfile, run pki, start the rest.
	s.run(upTimeout, "up", "-d", "--build")
	t.Logf("stack up after %v", time.Since(start).Round(time.Second))
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort)
	waitReady(t, readyz)
	gw := s.container("gateway")
	waitHealth(t, gw, "gateway")
	waitHealth(t, s.container("mosquitto"), "mosquitto")
	waitHealth(t, s.container("backend"), "backend")
	if u := containerUser(t, gw); u != "10001:10001" {
		t.Errorf("gateway runs as %q, want the non-root 10001:10001", u)
	}
	// The gateway cannot mint device certificates: the CA key is not
	// readable by it, and its certificates mount is read-only.
	if out, err := exec.Command("docker", "exec", gw, "sh", "-c",
		"test ! -r /etc/iotgw/certs/ca.key && ! touch /etc/iotgw/certs/x 2>/dev/null").CombinedOutput(); err != nil {
		t.Errorf("gateway container can read the CA key or write the certificates: %v %s", err, out)
	}

	// Provision a device as the compose file's header says, and copy its
	// certificate out of the volume.
	secret := strings.TrimSpace(s.run(cmdTimeout, "run", "--rm", "-T", "--entrypoint", "iotgw", "pki",
		"device", "add", deviceID, "--issue-cert", "--certs", "/etc/iotgw/certs"))
	if len(secret) < 16 || strings.ContainsAny(secret, " \n") {
		t.Fatalf("device add printed %q, want the device's secret", secret)
	}
	certs := filepath.Join(dir, "certs")
	if err := os.MkdirAll(filepath.Join(certs, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	broker := s.container("mosquitto")
	for _, f := range []string{"ca.crt", "devices/" + deviceID + ".crt", "devices/" + deviceID + ".key"} {
		if out, err := exec.Command("docker", "cp", broker+":/etc/iotgw/certs/"+f, filepath.Join(certs, f)).CombinedOutput(); err != nil {
			t.Fatalf("docker cp %s: %v: %s", f, err, out)
		}
	}

	// Signed round trips from this host to the device listener.
	d := newDevice(t, fmt.Sprintf("ssl://127.0.0.1:%d", devPort), certs, secret)
	first := d.roundTrip(t, `{"temp":21.5}`, true)
	d.roundTrip(t, `{"temp":21.6}`, false)
	stats := backendStats(t, backendPort)
	if stats.ByDevice[deviceID] != 2 {
		t.Fatalf("backend saw %d message(s) from %s, want 2 (stats %+v)", stats.ByDevice[deviceID], deviceID, stats)
	}

	// Restart the gateway as a new container (a plain "restart" keeps the
	// container's own file system, so it would not show that the registry
	// and the outbox are on volumes).
	s.run(cmdTimeout, "rm", "--stop", "--force", "gateway")
	s.run(cmdTimeout, "up", "-d", "--no-deps", "gateway")
	if id := s.container("gateway"); id == gw {
		t.Fatalf("gateway container %s was not replaced", id)
	}
	waitReady(t, readyz)
	// The outbox survived: the first message, sent again, is a replay
	// (the replay window is reloaded from the outbox at start).
	d.publish(t, first.raw)
	r := d.next(t)
	if !r.valid || r.payload["in_reply_to"] != first.id || r.payload["error"] != "replay" {
		t.Fatalf("resent message after restart: reply %s (signature valid %v), want a signed replay notice", r.env.Payload, r.valid)
	}
	// The registry survived: the device is still known, and a new message
	// reaches the backend.
	d.roundTrip(t, `{"temp":21.7}`, false)
	if n := backendStats(t, backendPort).ByDevice[deviceID]; n != 3 {
		t.Fatalf("backend saw %d message(s) from %s after the restart, want 3", n, deviceID)
	}
	t.Logf("compose test done after %v", time.Since(start).Round(time.Second))

	// down -v removes the containers and the volumes.
	s.run(cmdTimeout, "down", "-v", "--remove-orphans", "--timeout", "20")
	out, err := exec.Command("docker", "volume", "ls", "-q", "--filter", "label=com.docker.compose.project="+s.project).Output()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("volumes left after down -v: %q (%v)", out, err)
	}
}

// The listener lines of mosquitto/mosquitto.conf (as in test/harness).
var (
	deviceListener  = regexp.MustCompile(`(?m)^listener 8883[ \t]*$`)
	gatewayListener = regexp.MustCompile(`(?m)^listener 8884 127\.0\.0\.1[ \t]*$`)
)

// loopbackListeners returns conf with its device listener on
// 127.0.0.1:devPort and its gateway listener on 127.0.0.1:gwPort; every
// path stays the container's. It fails unless each line occurs once.
func loopbackListeners(conf []byte, devPort, gwPort int) ([]byte, error) {
	for _, re := range []*regexp.Regexp{deviceListener, gatewayListener} {
		if n := len(re.FindAllIndex(conf, -1)); n != 1 {
			return nil, fmt.Errorf("mosquitto.conf: want one line matching %s, found %d; update test/compose", re, n)
		}
	}
	conf = deviceListener.ReplaceAllLiteral(conf, []byte("listener "+strconv.Itoa(devPort)+" 127.0.0.1"))
	return gatewayListener.ReplaceAllLiteral(conf, []byte("listener "+strconv.Itoa(gwPort)+" 127.0.0.1")), nil
}

// effectiveFile merges docker-compose.yml with host-network.override.yml
// (compose config) and drops every service's "ports": with network_mode
// host they are meaningless, compose v1 refuses the combination, and an
// override file cannot remove a list. It checks that no service is left
// on a compose network, and that the device listener is the test's.
func effectiveFile(t *testing.T, s *stack, dir string, devPort int) string {
	t.Helper()
	merged := &stack{t: t, cmd: s.cmd, root: s.root, project: s.project, env: s.env,
		file: filepath.Join(s.root, "docker-compose.yml")}
	out := merged.run(cmdTimeout, "-f", filepath.Join(s.root, "test/compose/host-network.override.yml"), "config")
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(out), &cfg); err != nil {
		t.Fatalf("compose config: %v", err)
	}
	services, _ := cfg["services"].(map[string]any)
	for _, want := range []string{"pki", "mosquitto", "backend", "gateway"} {
		svc, ok := services[want].(map[string]any)
		if !ok {
			t.Fatalf("compose config: no service %q", want)
		}
		delete(svc, "ports")
		if nm, _ := svc["network_mode"].(string); nm != "host" && nm != "none" {
			t.Fatalf("service %s: network_mode %q after the override, want host or none (never a bridge network)", want, nm)
		}
	}
	delete(cfg, "networks")
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "compose.yml")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// waitReady polls url until it answers 200.
func waitReady(t *testing.T, url string) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	last := ""
	for deadline := time.Now().Add(readyTimeout); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		resp, err := c.Get(url)
		if err != nil {
			last = err.Error()
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return
		}
		last = resp.Status
	}
	t.Fatalf("%s not ready after %v: %s", url, readyTimeout, last)
}

// waitHealth waits for the container's healthcheck to pass.
func waitHealth(t *testing.T, id, name string) {
	t.Helper()
	st := ""
	for deadline := time.Now().Add(readyTimeout); time.Now().Before(deadline); time.Sleep(time.Second) {
		if st = health(id); st == "healthy" {
			return
		}
	}
	t.Fatalf("%s container health %q after %v, want healthy", name, st, readyTimeout)
}

func containerUser(t *testing.T, id string) string {
	t.Helper()
	out, err := exec.Command("docker", "exec", id, "sh", "-c", "echo $(id -u):$(id -g)").Output()
	if err != nil {
		t.Fatalf("docker exec id: %v", err)
	}
	return strings.TrimSpace(string(out))
}

type stats struct {
	ByDevice map[string]int `json:"by_device"`
}

func backendStats(t *testing.T, port int) stats {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/stats", port))
	if err != nil {
		t.Fatalf("backend stats: %v", err)
	}
	defer resp.Body.Close()
	var s stats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("backend stats: %v", err)
	}
	return s
}

// device is a Paho client with the device's certificate, collecting the
// replies on its response topic.
type device struct {
	c       mqtt.Client
	secret  string
	replies chan reply
}

type reply struct {
	env     envelope.Envelope
	payload map[string]any
	valid   bool // signed with the device's downlink key
}

type sent struct {
	raw []byte
	id  string
}

func newDevice(t *testing.T, addr, certs, secret string) *device {
	t.Helper()
	c, err := harness.Connect(t, addr, harness.TLSConfig(t, certs, deviceID), deviceID)
	if err != nil {
		t.Fatalf("connect %s to %s: %v", deviceID, addr, err)
	}
	d := &device{c: c, secret: secret, replies: make(chan reply, 100)}
	tok := c.Subscribe("device/"+deviceID+"/response", 1, func(_ mqtt.Client, m mqtt.Message) {
		raw := append([]byte(nil), m.Payload()...)
		var r reply
		e, err := envelope.Parse(raw, envelope.Limits{})
		if err == nil {
			r.env = e
			r.valid = envelope.Verify(envelope.NewDownlinkMAC([]byte(secret)), &e)
			_ = json.Unmarshal(e.Payload, &r.payload)
		}
		d.replies <- r
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return d
}

func (d *device) publish(t *testing.T, raw []byte) {
	t.Helper()
	tok := d.c.Publish("device/"+deviceID+"/data", 1, false, raw)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

func (d *device) next(t *testing.T) reply {
	t.Helper()
	select {
	case r := <-d.replies:
		return r
	case <-time.After(replyTimeout):
		t.Fatalf("no reply on device/%s/response within %v", deviceID, replyTimeout)
		return reply{}
	}
}

// roundTrip sends a signed message and checks the signed reply: status 200
// from the backend, in reply to it. With fresh set, a device that the
// gateway does not know yet (it re-reads the registry every
// registry.refresh) gets no reply, so the message is resent, a bounded
// number of times, with a new id.
func (d *device) roundTrip(t *testing.T, payload string, fresh bool) sent {
	t.Helper()
	tries := 1
	if fresh {
		tries = 10
	}
	for i := 0; i < tries; i++ {
		msgID := string(envelope.NewMessageID())
		e := envelope.New([]byte(d.secret), deviceID, time.Now().Unix(), msgID, []byte(payload))
		raw := envelope.AppendJSON(nil, &e)
		d.publish(t, raw)
		var r reply
		select {
		case r = <-d.replies:
		case <-time.After(replyTimeout):
			if i+1 < tries {
				continue // unknown_device gets no notice: not registered yet
			}
			t.Fatalf("no reply to %s within %v", msgID, replyTimeout)
		}
		if !r.valid {
			t.Fatalf("reply %q: signature does not verify with the downlink key", r.env.Payload)
		}
		if r.payload["in_reply_to"] != msgID {
			t.Fatalf("reply %s is not in reply to %s", r.env.Payload, msgID)
		}
		if st, _ := r.payload["status"].(float64); st != http.StatusOK {
			t.Fatalf("reply %s: want status 200 from the backend", r.env.Payload)
		}
		return sent{raw: raw, id: msgID}
	}
	t.Fatal("unreachable")
	return sent{}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
