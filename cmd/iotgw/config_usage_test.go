package main

import (
	"strings"
	"testing"
)

// TestConfigCheckUsage (issue 16, item 15): "config check" without a file,
// or with two, gets a one-line usage reason naming what it wants (exit 2),
// not cobra's "accepts 1 arg(s), received 0".
func TestConfigCheckUsage(t *testing.T) {
	for _, args := range [][]string{{"config", "check"}, {"config", "check", "a.yaml", "b.yaml"}} {
		r := runCLI(t, "", args...)
		if r.code != 2 || r.err == nil {
			t.Fatalf("%v: exit %d (%v), want 2", args, r.code, r.err)
		}
		msg := r.err.Error()
		if strings.Contains(msg, "arg(s)") || !strings.Contains(msg, "config check FILE") || strings.Contains(msg, "\n") {
			t.Errorf("%v: %q, want one line saying config check wants one FILE", args, msg)
		}
	}
}
