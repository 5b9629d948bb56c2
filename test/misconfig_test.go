package test

import (
	"context"

	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/test/harness"
)

// serveFails runs `iotgw serve` on f's config (edited by edit) with extra
// environment variables, and checks that it exits non-zero within a bound,
// printing exactly one "iotgw: " error line that contains want.
func (f *fixture) serveFails(t *testing.T, edit func(string) string, env []string, want string) string {
	t.Helper()
	cfg := f.config(harness.FreePort(t), gatewayOpts{})
	if edit != nil {
		cfg = edit(cfg)
	}
	cfgPath := filepath.Join(f.dir, "bad.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.bin, "serve", "--config", cfgPath)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("serve did not exit within 20s (it should refuse to start):\n%s", out)
	}
	if err == nil {
		t.Fatalf("serve exited 0, want a start-up failure:\n%s", out)
	}
	return oneErrorLine(t, string(out), want)
}

// oneErrorLine checks that out holds exactly one "iotgw: " line and that
// it contains want, and returns it.
func oneErrorLine(t *testing.T, out, want string) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "iotgw: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], want) {
		t.Fatalf("want one error line containing %q, got %q in:\n%s", want, lines, out)
	}
	return lines[0]
}

// TestServeRefusesDeviceCertificate: a gateway started with a device's
// certificate would connect and subscribe but never receive a message
// (the ACL gives devices only their own topics). It must not start.
func TestServeRefusesDeviceCertificate(t *testing.T) {
	f := newFixture(t, "sensor-1")
	crt, key := pki.DeviceCert(f.certs, "sensor-1")
	line := f.serveFails(t, func(c string) string {
		c = strings.Replace(c, f.certs+"/gateway.crt", crt, 1)
		return strings.Replace(c, f.certs+"/gateway.key", key, 1)
	}, nil, "mqtt.cert_file")
	if !strings.Contains(line, `"sensor-1"`) || !strings.Contains(line, `"gateway"`) {
		t.Fatalf("the line should name the certificate's CN and the identity wanted: %s", line)
	}
}

// TestServeRefusesMissingRegistry: a registry.path that does not exist is
// not created empty (a gateway with 0 devices rejects everything).
func TestServeRefusesMissingRegistry(t *testing.T) {
	f := newFixture(t)
	missing := filepath.Join(f.dir, "typo.db")
	f.serveFails(t, func(c string) string {
		return strings.Replace(c, "path: "+f.db, "path: "+missing, 1)
	}, nil, "registry.path")
	if _, err := os.Stat(missing); err == nil {
		t.Fatalf("serve created %s", missing)
	}
}

// TestServeRefusesUnknownEnv: a misspelt IOTGW_ variable is refused with a
// suggestion, by serve and by a CLI command that loads the config.
func TestServeRefusesUnknownEnv(t *testing.T) {
	f := newFixture(t, "sensor-1")
	f.serveFails(t, nil, []string{"IOTGW_BAKEND_URL=http://127.0.0.1:1/x"},
		"IOTGW_BAKEND_URL: unknown setting; did you mean IOTGW_BACKEND_URL?")

	cmd := exec.Command(f.bin, "device", "list", "--db", f.db)
	cmd.Env = append(os.Environ(), "IOTGW_REGISTRY_PAHT=x")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("device list accepted IOTGW_REGISTRY_PAHT:\n%s", out)
	}
	oneErrorLine(t, string(out), "IOTGW_REGISTRY_PAHT: unknown setting; did you mean IOTGW_REGISTRY_PATH?")
}

// TestDeadletterMissingOutbox: a typo in --outbox is an error, not an
// empty database and "0 dead letter(s)".
func TestDeadletterMissingOutbox(t *testing.T) {
	bin := harness.BuildIotgw(t)
	missing := filepath.Join(t.TempDir(), "typo.db")
	for _, args := range [][]string{{"list"}, {"retry", "--all"}, {"drop", "--all"}} {
		out, err := runCLI(bin, "", append([]string{"deadletter", "--outbox", missing}, args...)...)
		if err == nil {
			t.Fatalf("deadletter %v on a missing outbox succeeded:\n%s", args, out)
		}
		oneErrorLine(t, out, missing)
		if _, err := os.Stat(missing); err == nil {
			t.Fatalf("deadletter %v created %s", args, missing)
		}
	}
}

// TestSecondGatewayRefused: two gateways on one outbox would forward the
// same rows twice; the second refuses to start and names the first (pid).
// The deadletter commands still work beside the running gateway.
func TestSecondGatewayRefused(t *testing.T) {
	f := newFixture(t, "sensor-1")
	g := f.startGateway(gatewayOpts{})
	line := f.serveFails(t, nil, nil, "outbox.path")
	if !strings.Contains(line, fmt.Sprint(g.cmd.Process.Pid)) {
		t.Fatalf("the line should name the running gateway's pid %d: %s", g.cmd.Process.Pid, line)
	}
	out, err := runCLI(f.bin, "", "deadletter", "--outbox", f.outbox(), "--db", f.db, "list")
	if err != nil || !strings.Contains(out, "0 dead letter(s)") {
		t.Fatalf("deadletter list beside a running gateway: %v\n%s", err, out)
	}
	out, err = runCLI(f.bin, "", "deadletter", "--outbox", f.outbox(), "--db", f.db, "retry", "--all")
	if err != nil {
		t.Fatalf("deadletter retry beside a running gateway: %v\n%s", err, out)
	}
}

// TestPrintDefaultsValidates: `config print-defaults` is valid YAML that
// `config check` accepts once the required keys it names are filled in,
// and examples/iotgw.yaml documents exactly its keys.
func TestPrintDefaultsValidates(t *testing.T) {
	bin := harness.BuildIotgw(t)
	certs := harness.PKI(t)
	out, err := exec.Command(bin, "config", "print-defaults").Output()
	if err != nil {
		t.Fatalf("print-defaults: %v", err)
	}
	defaults := flatKeys(t, out)
	if len(defaults) < 40 {
		t.Fatalf("print-defaults printed %d keys", len(defaults))
	}
	// Values for the keys that have no usable default.
	fill := map[string]string{
		"mqtt.broker":    "ssl://127.0.0.1:8884",
		"mqtt.ca_file":   certs + "/ca.crt",
		"mqtt.cert_file": certs + "/gateway.crt",
		"mqtt.key_file":  certs + "/gateway.key",
		"backend.url":    "http://127.0.0.1:8080/ingest/{device_id}",
	}
	var doc map[string]any
	if err := yaml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("print-defaults is not YAML: %v\n%s", err, out)
	}
	path := filepath.Join(t.TempDir(), "defaults.yaml")
	// config check opens the registry as serve does, and wants the
	// outbox's directory: both live beside the file, not in the cwd.
	dir := filepath.Dir(path)
	reg, err := registry.Open(context.Background(), filepath.Join(dir, "iotgw.db"))
	if err != nil {
		t.Fatal(err)
	}
	reg.Close()
	doc["registry"].(map[string]any)["path"] = filepath.Join(dir, "iotgw.db")
	doc["outbox"].(map[string]any)["path"] = filepath.Join(dir, "iotgw-outbox.db")
	var filled []string
	for range len(fill) + 1 {
		b, err := yaml.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runCLI(bin, "", "config", "check", path)
		if err == nil {
			break
		}
		line := oneErrorLine(t, out, ": required")
		key := strings.TrimSpace(strings.Split(strings.TrimPrefix(line, "iotgw: "), ":")[0])
		v, ok := fill[key]
		if !ok {
			t.Fatalf("the defaults fail on a key the test does not know as required: %s", line)
		}
		sec, k, _ := strings.Cut(key, ".")
		doc[sec].(map[string]any)[k] = v
		filled = append(filled, key)
	}
	if out, err := runCLI(bin, "", "config", "check", path); err != nil {
		t.Fatalf("defaults with %v filled in do not validate: %s", filled, out)
	}
	t.Logf("required keys named by config check: %v", filled)

	ex, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "examples", "iotgw.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	example := flatKeys(t, ex)
	for k := range defaults {
		if !example[k] {
			t.Errorf("examples/iotgw.yaml does not document %s", k)
		}
	}
	for k := range example {
		if !defaults[k] {
			t.Errorf("examples/iotgw.yaml has %s, which print-defaults does not know", k)
		}
	}
}

// flatKeys returns the dotted leaf keys of a YAML document.
func flatKeys(t *testing.T, b []byte) map[string]bool {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("YAML: %v\n%s", err, b)
	}
	keys := map[string]bool{}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			if sub, ok := v.(map[string]any); ok {
				walk(prefix+k+".", sub)
				continue
			}
			keys[prefix+k] = true
		}
	}
	walk("", doc)
	return keys
}

// TestDeviceUsableAtOnce: a device added while the gateway runs is
// accepted on its first message, sent right after the add, even though the
// periodic registry refresh is a minute away: the miss re-reads the
// registry before rejecting unknown_device.
func TestDeviceUsableAtOnce(t *testing.T) {
	f := newFixture(t, "sensor-1")
	g := f.startGateway(gatewayOpts{edit: func(c string) string {
		return strings.Replace(c, "refresh: 200ms", "refresh: 1m", 1)
	}})
	harness.IssueDevice(t, f.certs, "sensor-new")
	d := f.device("sensor-new") // connected and subscribed before it is registered
	r, err := registry.Open(context.Background(), f.db)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := registry.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Add(context.Background(), "sensor-new", secret); err != nil {
		t.Fatal(err)
	}
	r.Close()
	d.secret = secret
	raw, msgID := d.signed(`{"first":true}`, time.Now().Unix())
	d.publish("", raw)
	rep, ok := d.nextReply(10 * time.Second)
	if !ok {
		t.Fatalf("no reply to the new device's first message (rejected: %v)", g.metric(`iotgw_messages_rejected_total{reason="unknown_device"}`))
	}
	p := replyPayload(t, rep)
	if !rep.valid || p["in_reply_to"] != msgID || p["status"] != float64(200) {
		t.Fatalf("first message of a just-added device: reply %s (valid %v)", rep.env.Payload, rep.valid)
	}
}
