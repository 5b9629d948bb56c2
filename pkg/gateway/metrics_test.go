package gateway

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/iotgw/iotgw/pkg/forward"
)

func TestStatusClass(t *testing.T) {
	for _, tc := range []struct {
		status int
		want   string
	}{{200, "2xx"}, {204, "2xx"}, {299, "2xx"}, {301, "3xx"}, {308, "3xx"}, {400, "4xx"}, {429, "4xx"},
		{500, "5xx"}, {503, "5xx"}, {0, "error"}, {99, "error"}, {600, "error"}, {-1, "error"}} {
		if got := statusClass(tc.status); got != tc.want {
			t.Errorf("statusClass(%d) = %q, want %q", tc.status, got, tc.want)
		}
	}
}

// TestBackendAnswer: a status inside a retryable error or a redirect
// error counts by its class (a 302 is "3xx", issue 16 item 15); a
// transport error (no status) counts as "error".
func TestBackendAnswer(t *testing.T) {
	m := &metrics{backend: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"class"})}
	m.backendAnswer(201, nil)
	m.backendAnswer(0, &forward.RetryableError{Status: 503})
	m.backendAnswer(0, errors.Join(errors.New("wrapped"), &forward.RetryableError{Status: 502}))
	m.backendAnswer(0, &forward.RetryableError{Err: errors.New("connection refused")})
	m.backendAnswer(0, errors.New("cannot build request"))
	m.backendAnswer(0, &forward.RedirectError{Status: 302, Host: "elsewhere.example"})
	m.backendAnswer(0, fmt.Errorf("final: %w", &forward.RedirectError{Status: 308}))
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.backend)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 {
		t.Fatalf("Gather = %v, %v", mfs, err)
	}
	got := map[string]float64{}
	for _, s := range mfs[0].GetMetric() {
		got[s.GetLabel()[0].GetValue()] = s.GetCounter().GetValue()
	}
	if want := map[string]float64{"2xx": 1, "3xx": 2, "5xx": 2, "error": 2}; !maps.Equal(got, want) {
		t.Errorf("backend answers by class = %v, want %v", got, want)
	}
}

// TestPprofRoutes: /debug/pprof/ is served only when http.pprof is on.
func TestPprofRoutes(t *testing.T) {
	for _, on := range []bool{false, true} {
		g := &Gateway{metrics: &metrics{reg: prometheus.NewRegistry()}}
		g.cfg.HTTP.Pprof = on
		rec := httptest.NewRecorder()
		g.routes().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/", nil))
		if want := map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[on]; rec.Code != want {
			t.Errorf("pprof %v: GET /debug/pprof/ = %d, want %d", on, rec.Code, want)
		}
	}
}
