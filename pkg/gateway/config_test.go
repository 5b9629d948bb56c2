package gateway

import (
	"strings"
	"testing"
)

// TestPprofOnlyOnLoopback: pprof (heap contents, goroutine stacks, a CPU
// profile on demand) is refused at config validation unless http.listen is
// a loopback address; off, any address is fine.
func TestPprofOnlyOnLoopback(t *testing.T) {
	if DefaultConfig().HTTP.Pprof {
		t.Fatal("http.pprof must default to false")
	}
	for _, tc := range []struct {
		listen string
		pprof  bool
		ok     bool
	}{
		{"127.0.0.1:9464", true, true},
		{"127.9.9.9:9464", true, true},
		{"[::1]:9464", true, true},
		{"localhost:9464", true, true},
		{"0.0.0.0:9464", true, false},
		{":9464", true, false},
		{"[::]:9464", true, false},
		{"192.0.2.10:9464", true, false},
		{"gateway.example:9464", true, false},
		{"", true, true}, // no endpoint at all: nothing is served
		{"0.0.0.0:9464", false, true},
		{":9464", false, true},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			err := HTTPConfig{Listen: tc.listen, Pprof: tc.pprof}.Validate()
			if tc.ok && err != nil {
				t.Fatalf("Validate() = %v, want ok", err)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "http.pprof")) {
				t.Fatalf("Validate() = %v, want an http.pprof error", err)
			}
		})
	}
}
