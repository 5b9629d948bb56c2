package compose

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/iotgw/iotgw/test/harness"
)

// TestComposeRevokeRestart runs docker-compose.yml with its own network
// (a compose bridge network, the gateway in the broker's network
// namespace), which TestComposeStack's host-network override cannot show
// (issue 16, item 11). Only the images (built from the Dockerfile first)
// and the published ports change: the device listener and the
// operations port are published on 127.0.0.1, on free ports.
//
// A device is revoked, and the broker is restarted alone, as the old
// restart step said: the broker gets a new network namespace, and the
// gateway, left in the old one, stays unready (this is the failure of the
// issue, reproduced; it is also what shows that the test runs the shared
// namespace at all). Then the restart step that "device revoke" prints is
// run as printed: the gateway is ready again, reachable through the new
// namespace, a device's signed message gets its reply, and the revoked
// device is refused by the broker.
func TestComposeRevokeRestart(t *testing.T) {
	compose, why := engine(t)
	if compose == nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but the compose test cannot run: %s (.ci/run starts an engine with scripts/docker-engine.sh)", why)
		}
		t.Skipf("SKIPPED: docker-compose.yml's network and the revocation restart step are NOT tested: %s", why)
	}
	root := harness.RepoRoot(t)
	start := time.Now()
	if out, err := exec.Command(filepath.Join(root, "test/compose/base-images.sh")).CombinedOutput(); err != nil {
		t.Fatalf("base images: %v\n%s", err, out)
	}
	goproxy, _ := exec.Command("go", "env", "GOPROXY").Output()
	build := exec.Command("docker", "build", "-q", "--network", "host",
		"--build-arg", "GOPROXY="+strings.TrimSpace(string(goproxy)), "-t", "iotgwtest/iotgw:local", root)
	build.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, lastBytes(out, 4000))
	}

	devPort, httpPort := harness.FreePort(t), harness.FreePort(t)
	dir := harness.ReadableTempDir(t)
	s := &stack{t: t, cmd: compose, root: root, project: fmt.Sprintf("iotgwnetns%d", os.Getpid()),
		env: append(os.Environ(), "DOCKER_BUILDKIT=0", "COMPOSE_DOCKER_CLI_BUILD=0")}
	s.file = sharedNetnsFile(t, s, dir, devPort, httpPort)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := s.try(cmdTimeout, "logs", "--no-color", "--tail", "40")
			t.Logf("compose logs:\n%s", out)
		}
		if out, err := s.try(cmdTimeout, "down", "-v", "--remove-orphans", "--timeout", "20"); err != nil {
			t.Errorf("compose down -v: %v\n%s", err, out)
		}
	})

	s.run(upTimeout, "up", "-d")
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort)
	waitReady(t, readyz)
	gw := s.container("gateway")
	waitHealth(t, gw, "gateway")
	if mode, _ := exec.Command("docker", "inspect", "-f", "{{.HostConfig.NetworkMode}}", gw).Output(); !strings.HasPrefix(string(mode), "container:") {
		t.Fatalf("gateway network mode %q, want the broker's namespace (container:...)", mode)
	}
	t.Logf("stack up on its own network after %v", time.Since(start).Round(time.Second))

	// Two devices: one to revoke, one to use.
	certs := filepath.Join(dir, "certs")
	if err := os.MkdirAll(filepath.Join(certs, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{}
	for _, id := range []string{readmeDevice, deviceID} {
		secrets[id] = strings.TrimSpace(s.run(cmdTimeout, "run", "--rm", "-T", "--entrypoint", "iotgw", "pki",
			"device", "add", id, "--issue-cert", "--certs", "/etc/iotgw/pki"))
		for _, f := range []string{"ca.crt", "devices/" + id + ".crt", "devices/" + id + ".key"} {
			b := s.run(cmdTimeout, "run", "--rm", "-T", "--entrypoint", "cat", "pki", "/etc/iotgw/pki/"+f)
			if err := os.WriteFile(filepath.Join(certs, f), []byte(b), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	devAddr := fmt.Sprintf("ssl://127.0.0.1:%d", devPort)
	newDevice(t, devAddr, certs, secrets[deviceID]).roundTrip(t, `{"temp":1}`, true)

	out := s.run(cmdTimeout, "run", "--rm", "-T", "--entrypoint", "iotgw", "pki",
		"device", "revoke", readmeDevice, "--certs", "/etc/iotgw/pki")
	var step []string
	for _, line := range strings.Split(out, "\n") {
		if cmd, _, ok := strings.Cut(strings.TrimSpace(line), "(docker-compose.yml"); ok && strings.HasPrefix(cmd, "docker compose ") {
			step = strings.Fields(strings.TrimPrefix(cmd, "docker compose "))
		}
	}
	if len(step) == 0 {
		t.Fatalf("device revoke printed no docker compose step:\n%s", out)
	}

	// The old advice: the broker restarted alone. It is healthy again, in a
	// new namespace; the gateway, in the old one, cannot reach it.
	s.run(cmdTimeout, "restart", "mosquitto")
	waitHealth(t, s.container("mosquitto"), "mosquitto")
	const polls = 15
	ready := 0
	for i := 0; i < polls; i++ {
		if exec.Command("docker", "exec", gw, "busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9464/readyz").Run() == nil {
			ready++
		}
		time.Sleep(time.Second)
	}
	if ready != 0 {
		t.Fatalf("after restart mosquitto alone the gateway was ready in %d of %d polls: the test does not run the shared namespace (or Docker changed)", ready, polls)
	}
	t.Logf("restart mosquitto alone: the gateway stayed unready in %d of %d polls (the dead namespace)", polls, polls)

	// The printed step, as printed.
	s.run(upTimeout, step...)
	if id := s.container("gateway"); id == gw {
		t.Fatalf("%v did not recreate the gateway", step)
	}
	waitHealth(t, s.container("gateway"), "gateway")
	waitReady(t, readyz)
	newDevice(t, devAddr, certs, secrets[deviceID]).roundTrip(t, `{"temp":2}`, true)
	if c, err := harness.Connect(t, devAddr, harness.TLSConfig(t, certs, readmeDevice), readmeDevice); err == nil {
		c.Disconnect(0)
		t.Fatalf("the revoked %s still connects after %v", readmeDevice, step)
	}
	t.Logf("the printed step (compose %s) recovered the gateway after %v", strings.Join(step, " "), time.Since(start).Round(time.Second))
}

// sharedNetnsFile writes docker-compose.yml as compose resolves it, with
// the pki, backend and gateway services on the image built by the test
// (no build) and the broker's published ports moved to 127.0.0.1 and
// free ports; the networks stay as they are.
func sharedNetnsFile(t *testing.T, s *stack, dir string, devPort, httpPort int) string {
	t.Helper()
	orig := &stack{t: t, cmd: s.cmd, root: s.root, project: s.project, env: s.env,
		file: filepath.Join(s.root, "docker-compose.yml")}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(orig.run(cmdTimeout, "config")), &cfg); err != nil {
		t.Fatalf("compose config: %v", err)
	}
	services, _ := cfg["services"].(map[string]any)
	for _, name := range []string{"pki", "backend", "gateway"} {
		svc, ok := services[name].(map[string]any)
		if !ok {
			t.Fatalf("compose config: no service %q", name)
		}
		delete(svc, "build")
		svc["image"] = "iotgwtest/iotgw:local"
	}
	broker, ok := services["mosquitto"].(map[string]any)
	if !ok {
		t.Fatal("compose config: no service mosquitto")
	}
	broker["ports"] = []string{"127.0.0.1:" + strconv.Itoa(devPort) + ":8883", "127.0.0.1:" + strconv.Itoa(httpPort) + ":9464"}
	if gw, _ := services["gateway"].(map[string]any); gw["network_mode"] != "service:mosquitto" {
		t.Fatalf("gateway network_mode %v, want service:mosquitto", gw["network_mode"])
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "compose-netns.yml")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}
