// Package compose tests docker-compose.yml and the Dockerfile for real: the
// images are built, and README.md's "Run it with Docker compose" steps run
// as written, in one bash script: up, a device added and its certificate
// taken out of the pki volume, a signed message and its verified reply
// from the Python device, the device revoked and the restart step that
// "device revoke" prints, after which the broker refuses it. Then signed
// messages of a second device go from this host through the broker and
// the gateway to the backend and back, across a plain broker restart and
// a replaced gateway container.
//
// It needs a Docker engine (DOCKER_HOST, or the default socket) and
// docker-compose (v1) or the docker compose plugin. Without an engine it
// skips, loudly; with CI=true it fails instead. .ci/run starts an engine
// (scripts/docker-engine.sh). Base images that cannot be pulled are built
// locally by base-images.sh.
//
// TestComposeStack's traffic stays on loopback: host-network.override.yml
// puts every service in the host's network namespace with its listeners
// on 127.0.0.1 and test ports; no bridge network is created. So it cannot
// show the compose network, nor the gateway sharing the broker's network
// namespace (network_mode: service:mosquitto), where a broker restarted
// alone leaves the gateway in a dead namespace: TestComposeRevokeRestart
// (netns_test.go) runs docker-compose.yml with its own network for that.
package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
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

// The README's device (revoked by its steps) and the test's own.
const (
	readmeDevice = "sensor_001"
	deviceID     = "sensor_002"
)

// quickStartMarker precedes, on a line of its own, each ```sh block of
// README.md's "Run it with Docker compose" section that the test runs.
const quickStartMarker = "<!-- compose-quick-start -->"

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

	// README.md's "Run it with Docker compose", steps 1 to 7, as written.
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := markedSteps(string(readme), "Run it with Docker compose", quickStartMarker, 7)
	if err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(dir, "quick-start")
	out := s.script(t, upTimeout+10*time.Minute, strings.Join(steps, "\n"),
		"BROKER_PORT="+strconv.Itoa(devPort), "WORK="+work)
	t.Logf("stack up, the README's device added, used and revoked after %v", time.Since(start).Round(time.Second))
	checkQuickStart(t, out, steps)

	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort)
	waitReady(t, readyz)
	gw := s.container("gateway")
	broker := s.container("mosquitto")
	waitHealth(t, gw, "gateway")
	waitHealth(t, broker, "mosquitto")
	waitHealth(t, s.container("backend"), "backend")
	if u := containerUser(t, gw); u != "10001:10001" {
		t.Errorf("gateway runs as %q, want the non-root 10001:10001", u)
	}
	// The gateway cannot mint device certificates: its certificates mount
	// is read-only, and the CA key is on no volume that it or the broker
	// mounts (issue 16, item 6): someone with root in either container
	// does not find it.
	if out, err := exec.Command("docker", "exec", gw, "sh", "-c", "! touch /etc/iotgw/certs/x 2>/dev/null").CombinedOutput(); err != nil {
		t.Errorf("gateway container can write the certificates: %v %s", err, out)
	}
	caKey := s.run(cmdTimeout, "run", "--rm", "-T", "--entrypoint", "cat", "pki", "/etc/iotgw/pki/ca.key")
	for name, id := range map[string]string{"gateway": gw, "mosquitto": broker} {
		checkNoCAKey(t, name, id, caKey)
	}
	// The shipped stack does not warn about itself (issue 16, item 15):
	// no deprecated Mosquitto option, no plaintext-backend warning.
	if logs := s.run(cmdTimeout, "logs", "--no-color", "mosquitto"); strings.Contains(logs, "recommended to replace") || strings.Contains(logs, "deprecated") {
		t.Errorf("mosquitto warns about the shipped mosquitto.conf:\n%s", logs)
	}
	if logs := s.run(cmdTimeout, "logs", "--no-color", "gateway"); strings.Contains(logs, `"level":"warn"`) {
		t.Errorf("the gateway warns at start in the shipped stack:\n%s", grepLines(logs, `"level":"warn"`))
	}

	// A second device, provisioned as step 3 and 4 do, used from Go.
	secret := strings.TrimSpace(s.run(cmdTimeout, "run", "--rm", "-T", "--entrypoint", "iotgw", "pki",
		"device", "add", deviceID, "--issue-cert", "--certs", "/etc/iotgw/pki"))
	if len(secret) < 16 || strings.ContainsAny(secret, " \n") {
		t.Fatalf("device add printed %q, want the device's secret", secret)
	}
	certs := filepath.Join(dir, "certs")
	if err := os.MkdirAll(filepath.Join(certs, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "devices/" + deviceID + ".crt", "devices/" + deviceID + ".key"} {
		b := s.run(cmdTimeout, "run", "--rm", "-T", "--entrypoint", "cat", "pki", "/etc/iotgw/pki/"+f)
		if err := os.WriteFile(filepath.Join(certs, f), []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Signed round trips from this host to the device listener.
	devAddr := fmt.Sprintf("ssl://127.0.0.1:%d", devPort)
	d := newDevice(t, devAddr, certs, secret)
	first := d.roundTrip(t, `{"temp":21.5}`, true)
	d.roundTrip(t, `{"temp":21.6}`, false)
	if n := backendStats(t, backendPort).ByDevice[deviceID]; n != 2 {
		t.Fatalf("backend saw %d message(s) from %s, want 2", n, deviceID)
	}

	// The broker restarted alone: on the host's network (the override) the
	// gateway, left as it is, reconnects by itself (issue 16, item 11; in
	// the shipped file, where it shares the broker's namespace, it cannot,
	// which is why the restart step recreates both).
	s.run(cmdTimeout, "restart", "mosquitto")
	if id := s.container("gateway"); id != gw {
		t.Fatalf("restart mosquitto replaced the gateway container (%s, was %s)", id, gw)
	}
	waitHealth(t, s.container("mosquitto"), "mosquitto")
	waitReady(t, readyz)
	d = newDevice(t, devAddr, certs, secret)
	d.roundTrip(t, `{"temp":21.65}`, true)
	if n := backendStats(t, backendPort).ByDevice[deviceID]; n != 3 {
		t.Fatalf("backend saw %d message(s) from %s after the broker restart, want 3", n, deviceID)
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
	if n := backendStats(t, backendPort).ByDevice[deviceID]; n != 4 {
		t.Fatalf("backend saw %d message(s) from %s after the gateway was replaced, want 4", n, deviceID)
	}
	t.Logf("compose test done after %v", time.Since(start).Round(time.Second))

	// down -v removes the containers and the volumes.
	s.run(cmdTimeout, "down", "-v", "--remove-orphans", "--timeout", "20")
	vols, err := exec.Command("docker", "volume", "ls", "-q", "--filter", "label=com.docker.compose.project="+s.project).Output()
	if err != nil || strings.TrimSpace(string(vols)) != "" {
		t.Fatalf("volumes left after down -v: %q (%v)", vols, err)
	}
}

// script runs body, the README's steps, in one bash script under set
// -euo pipefail at the repository root, with the stack's compose file and
// project in COMPOSE_FILE and COMPOSE_PROJECT_NAME (so the README's plain
// "compose up" is the test's stack) and env added. It returns the
// combined output and fails the test if the script fails. Whatever the
// script leaves running is killed with its process group.
func (s *stack) script(t *testing.T, timeout time.Duration, body string, env ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", "-c", "set -euo pipefail\n"+body+"\n")
	cmd.Dir = s.root
	for _, kv := range s.env {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "COMPOSE_"), k == "WORK", strings.HasSuffix(k, "_PORT") && !strings.HasPrefix(k, "IOTGWTEST_"),
			k == "BASH_ENV", k == "ENV":
			continue // the script's own variables come from the README's defaults or from here
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, append([]string{"COMPOSE_FILE=" + s.file, "COMPOSE_PROJECT_NAME=" + s.project}, env...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	t.Logf("the README's compose steps, as one script:\n%s", lastBytes(out.Bytes(), 20000))
	if err != nil {
		t.Fatalf("the README's compose steps failed: %v (output above)", err)
	}
	return out.String()
}

// checkQuickStart checks what the README's steps printed: the Python
// device's verified reply, status 200, to its own message (step 5); the
// restart step that "device revoke" printed, which must be the one step 7
// runs (issue 16, item 11); and the revoked device refused (step 7).
func checkQuickStart(t *testing.T, out string, steps []string) {
	t.Helper()
	var reply struct {
		MessageID string `json:"message_id"`
		Reply     struct {
			InReplyTo string `json:"in_reply_to"`
			Status    int    `json:"status"`
		} `json:"reply"`
	}
	found, printed := false, ""
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, `{"message_id":`) && json.Unmarshal([]byte(line), &reply) == nil {
			found = true
		}
		if cmd, _, ok := strings.Cut(strings.TrimSpace(line), "(docker-compose.yml"); ok && strings.HasPrefix(cmd, "docker compose ") {
			printed = strings.TrimSpace(cmd)
		}
	}
	if !found || reply.MessageID == "" || reply.Reply.InReplyTo != reply.MessageID || reply.Reply.Status != 200 {
		t.Errorf("step 5: no verified reply with status 200 to %s's own message (got %+v)", readmeDevice, reply)
	}
	if printed == "" {
		t.Errorf("step 6: device revoke printed no docker compose restart step")
	} else if want := "compose " + strings.TrimPrefix(printed, "docker compose "); !containsLine(steps[len(steps)-1], want) {
		t.Errorf("device revoke prints %q, but the README's restart step does not run %q", printed, want)
	}
	if !strings.Contains(out, readmeDevice+" refused: its certificate is revoked") {
		t.Errorf("step 7: the revoked %s was not refused", readmeDevice)
	}
	if strings.Contains(out, "secret follows") {
		t.Errorf("device add says its secret follows, but the README sends it to a file")
	}
}

// checkNoCAKey fails the test when the CA key (caKey, PEM) is in a file
// under any mount of the container, searched as root.
func checkNoCAKey(t *testing.T, name, id, caKey string) {
	t.Helper()
	var line string
	for _, l := range strings.Split(caKey, "\n") {
		if len(l) >= 40 && !strings.HasPrefix(l, "-----") {
			line = l
			break
		}
	}
	if line == "" {
		t.Fatalf("pki volume: ca.key is not a PEM key: %q", lastBytes([]byte(caKey), 100))
	}
	mounts, err := exec.Command("docker", "inspect", "-f", `{{range .Mounts}}{{.Destination}} {{.Name}}{{"\n"}}{{end}}`, id).Output()
	if err != nil {
		t.Fatalf("docker inspect %s: %v", name, err)
	}
	var dests []string
	for _, l := range strings.Split(strings.TrimSpace(string(mounts)), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if len(f) > 1 && strings.HasSuffix(f[1], "_pki") {
			t.Errorf("%s container mounts the pki volume (%s), which holds the CA key", name, f[0])
		}
		dests = append(dests, f[0])
	}
	args := append([]string{"exec", "-u", "0", id, "grep", "-rlF", "-e", line}, dests...)
	found, err := exec.Command("docker", args...).Output()
	var exit *exec.ExitError
	switch {
	case err == nil:
		t.Errorf("%s container: the CA key is in %s", name, strings.TrimSpace(string(found)))
	case errors.As(err, &exit) && exit.ExitCode() == 1: // grep: not found
	default:
		t.Errorf("%s container: grep for the CA key under %v: %v %s", name, dests, err, found)
	}
}

// markedSteps returns the ```sh blocks of README.md's section "## title"
// that each follow marker on a line of their own, in order, exactly as
// written. A marker not directly followed by an unindented ```sh fence, an
// unclosed block or fewer than min blocks is an error, so the test cannot
// quietly run less.
func markedSteps(readme, title, marker string, min int) ([]string, error) {
	head := "\n## " + title + "\n"
	i := strings.Index(readme, head)
	if i < 0 {
		return nil, fmt.Errorf("README.md has no %q section", "## "+title)
	}
	sec := readme[i+len(head):]
	if j := strings.Index(sec, "\n## "); j >= 0 {
		sec = sec[:j]
	}
	lines := strings.Split(sec, "\n")
	var blocks []string
	for n := 0; n < len(lines); n++ {
		if strings.TrimSpace(lines[n]) != marker {
			continue
		}
		if lines[n] != marker || n+1 >= len(lines) || lines[n+1] != "```sh" {
			return nil, fmt.Errorf("README.md %s: %q must be unindented and directly followed by an unindented ```sh line", title, marker)
		}
		var body []string
		closed := false
		for n += 2; n < len(lines); n++ {
			if lines[n] == "```" {
				closed = true
				break
			}
			body = append(body, lines[n])
		}
		if !closed {
			return nil, fmt.Errorf("README.md %s: a marked ```sh block is not closed by an unindented ```", title)
		}
		blocks = append(blocks, strings.Join(body, "\n"))
	}
	if len(blocks) < min {
		return nil, fmt.Errorf("README.md %s: %d marked ```sh blocks, want at least %d", title, len(blocks), min)
	}
	return blocks, nil
}

func containsLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

func grepLines(text, substr string) string {
	var b strings.Builder
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
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
