package samplebackend

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestBackend(t *testing.T) {
	now := time.Unix(1700000000, 0)
	var log bytes.Buffer
	b := &Backend{now: func() time.Time { return now }, log: &log, seen: map[string]int{}, byDevice: map[string]int{}}
	h := b.Handler()
	do := func(method, target, msgID, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, target, strings.NewReader(body))
		if msgID != "" {
			req.Header.Set("X-Device-ID", "d1")
			req.Header.Set("X-Message-ID", msgID)
			req.Header.Set("Idempotency-Key", msgID)
			req.Header.Set("X-Device-Timestamp", "1700000000")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	tests := []struct {
		name       string
		method     string
		target     string
		msgID      string
		body       string
		wantStatus int
		wantBody   string
	}{
		{"forward", "POST", "/ingest/d1", "m1", `{"t":1}`, 200, `{"ok":true,"received":"m1"}`},
		{"same id again", "POST", "/ingest/d1", "m1", `{"t":1}`, 200, `"received":"m1"`},
		{"any path, text body", "POST", "/x/y%2Fz", "m2", `not json`, 200, `"received":"m2"`},
		{"GET on ingest", "GET", "/ingest/d1", "", "", 405, "POST only"},
		{"start outage", "POST", "/fail?for=10s&status=500", "", "", 200, "ok"},
		{"during outage", "POST", "/ingest/d1", "m3", `{}`, 500, `"ok":false`},
		{"bad outage", "POST", "/fail?for=x", "", "", 400, "for=DURATION"},
		{"end outage", "POST", "/fail?for=0", "", "", 200, "ok"},
		{"after outage", "POST", "/ingest/d1", "m3", `{}`, 200, `"received":"m3"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := do(tc.method, tc.target, tc.msgID, tc.body)
			if w.Code != tc.wantStatus || !strings.Contains(w.Body.String(), tc.wantBody) {
				t.Errorf("%s %s = %d %q, want %d containing %q", tc.method, tc.target, w.Code, w.Body, tc.wantStatus, tc.wantBody)
			}
		})
	}

	w := do("GET", "/stats?message_id=m1", "", "")
	var s Stats
	if err := json.Unmarshal(w.Body.Bytes(), &s); err != nil {
		t.Fatalf("stats: %v: %s", err, w.Body)
	}
	if s.Requests != 5 || s.OK != 4 || s.Failed != 1 || s.UniqueMessages != 3 || s.Duplicates != 1 ||
		s.ByDevice["d1"] != 4 || s.MessageOK == nil || *s.MessageOK != 2 {
		t.Errorf("stats = %s", w.Body)
	}

	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("log has %d lines, want 5:\n%s", len(lines), log.String())
	}
	want := []Record{
		{PathDeviceID: "d1", MessageID: "m1", Status: 200, Body: json.RawMessage(`{"t":1}`)},
		{PathDeviceID: "d1", MessageID: "m1", Status: 200, Body: json.RawMessage(`{"t":1}`)},
		{PathDeviceID: "y/z", MessageID: "m2", Status: 200, Body: json.RawMessage(`"not json"`)},
		{PathDeviceID: "d1", MessageID: "m3", Status: 500, Body: json.RawMessage(`{}`)},
		{PathDeviceID: "d1", MessageID: "m3", Status: 200, Body: json.RawMessage(`{}`)},
	}
	for i, line := range lines {
		var r Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %d: %v: %s", i, err, line)
		}
		w := want[i]
		if r.PathDeviceID != w.PathDeviceID || r.MessageID != w.MessageID || r.IdempotencyKey != w.MessageID ||
			r.DeviceID != "d1" || r.Timestamp != "1700000000" || r.Status != w.Status || string(r.Body) != string(w.Body) ||
			r.Time != "2023-11-14T22:13:20Z" {
			t.Errorf("log line %d = %s, want %+v", i, line, w)
		}
	}
}

func TestBackendOutageFromFlags(t *testing.T) {
	now := time.Unix(1700000000, 0)
	b := &Backend{now: func() time.Time { return now }, seen: map[string]int{}, byDevice: map[string]int{},
		failUntil: now.Add(time.Second), failStatus: http.StatusServiceUnavailable}
	post := func() int {
		w := httptest.NewRecorder()
		b.Handler().ServeHTTP(w, httptest.NewRequest("POST", "/ingest/d1", strings.NewReader("{}")))
		return w.Code
	}
	if got := post(); got != 503 {
		t.Errorf("during --fail-for: %d, want 503", got)
	}
	now = now.Add(time.Second)
	if got := post(); got != 200 {
		t.Errorf("after --fail-for: %d, want 200", got)
	}
}

// TestBackendBatch: POST /batch records each item and answers them in order.
func TestBackendBatch(t *testing.T) {
	var log bytes.Buffer
	b := &Backend{now: time.Now, log: &log, seen: map[string]int{}, byDevice: map[string]int{}}
	h := b.Handler()
	post := func(body string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("POST", "/batch", strings.NewReader(body)))
		return w
	}
	w := post(`[{"device_id":"d2","message_id":"b1","timestamp":1700000000,"payload":{"t": 1}},` +
		`{"device_id":"d3","message_id":"b2","timestamp":1700000001,"payload":"x"}]`)
	want := `[{"status":200,"body":{"ok":true,"received":"b1"}},{"status":200,"body":{"ok":true,"received":"b2"}}]`
	if w.Code != 200 || strings.TrimSpace(w.Body.String()) != want {
		t.Fatalf("batch = %d %s, want 200 %s", w.Code, w.Body, want)
	}
	if b.ok != 2 || b.byDevice["d2"] != 1 || b.byDevice["d3"] != 1 || strings.Count(log.String(), "\n") != 2 {
		t.Errorf("recorded ok=%d by_device=%v, log:\n%s", b.ok, b.byDevice, log.String())
	}
	if w := post(`{"device_id":"d2"}`); w.Code != 400 || !strings.Contains(w.Body.String(), "JSON array") {
		t.Errorf("not an array = %d %s, want 400", w.Code, w.Body)
	}
}
