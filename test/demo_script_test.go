package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/test/harness"
)

// TestDemoPortsBelowEphemeralRange: `make demo` failed at random with
// "bind: address already in use", because scripts/demo.sh picked its
// listeners' ports from 20000–49999, which overlaps the kernel's
// ephemeral range (32768–60999 by default), where any outgoing connection
// may take the port between the probe and the bind. This runs the
// script's own free_port 300 times and wants every port below the range.
func TestDemoPortsBelowEphemeralRange(t *testing.T) {
	script, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "scripts", "demo.sh"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(script)
	start := strings.Index(s, "used_ports=")
	end := strings.Index(s[max(start, 0):], "\n}\n")
	if start < 0 || end < 0 {
		t.Fatal("scripts/demo.sh has no free_port function after used_ports=")
	}
	fn := s[start : start+end+3]
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	prog := "die() { echo \"$*\" >&2; exit 1; }\n" + fn + "\nfor i in $(seq 300); do free_port port; echo $port; done\n"
	out, err := exec.Command("bash", "-c", prog).Output()
	if err != nil {
		t.Fatalf("free_port: %v", err)
	}
	ports := strings.Fields(string(out))
	if len(ports) != 300 {
		t.Fatalf("free_port gave %d ports, want 300", len(ports))
	}
	seen := map[string]bool{}
	for _, p := range ports {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1024 || n >= low {
			t.Fatalf("free_port gave %q, want a port in 1024..%d (below the ephemeral range)", p, low-1)
		}
		if seen[p] {
			t.Fatalf("free_port gave %s twice", p)
		}
		seen[p] = true
	}
}

// TestDemoUsesTheGatewayClientID (issue 16, item 15): the demo's gateway
// and its takeover row (o) use the gateway's client id, iotgw:gateway, as
// every other document and default does, not a demo-only one.
func TestDemoUsesTheGatewayClientID(t *testing.T) {
	script, err := os.ReadFile(filepath.Join(harness.RepoRoot(t), "scripts", "demo.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range regexp.MustCompile(`iotgw:[A-Za-z0-9_.-]+`).FindAllString(string(script), -1) {
		if id != mqttio.DefaultClientID {
			t.Errorf("scripts/demo.sh uses the client id %q, want %q (mqttio.DefaultClientID)", id, mqttio.DefaultClientID)
		}
	}
}
