package forward_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
)

// request is what a test backend saw.
type request struct {
	method, uri string
	header      http.Header
	body        []byte
}

// backend starts an httptest server that records each request on the
// returned channel and answers with answer.
func backend(t *testing.T, answer http.HandlerFunc) (*httptest.Server, <-chan request) {
	t.Helper()
	reqs := make(chan request, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		reqs <- request{method: r.Method, uri: r.RequestURI, header: r.Header.Clone(), body: body}
		answer(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, reqs
}

func reply(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body) // a failed write shows as the client's error
	}
}

func clientFor(url string, edit func(*forward.Config)) *forward.Client {
	cfg := forward.DefaultConfig()
	cfg.URL = url
	cfg.Workers = 2
	if edit != nil {
		edit(&cfg)
	}
	c, err := forward.NewClient(cfg)
	if err != nil {
		panic(err) // the tests' configs are valid
	}
	return c
}

func testJob() *forward.Job {
	return &forward.Job{Seq: 7, DeviceID: "sensor_001", MessageID: "550e8400-e29b-41d4-a716-446655440000",
		Timestamp: "1727712000", Payload: []byte(`{"temperature": 22.5}`), ReceivedAt: t0}
}

func TestClientPostClassifiesStatus(t *testing.T) {
	tests := []struct {
		status    int
		body      string
		retryable bool
	}{
		{200, `{"ok":true}`, false},
		{201, "created", false},
		{202, "", false},
		{204, "", false},
		{400, `{"error":"bad"}`, false},
		{401, "no", true}, // the backend refused the gateway's credentials, not the message
		{404, "not found", false},
		{409, "duplicate", false},
		{422, "unprocessable", false},
		{408, "timeout", true},
		{429, "slow down", true},
		{500, "boom", true},
		{502, "bad gateway", true},
		{503, "unavailable", true},
		{504, "", true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			srv, _ := backend(t, reply(tc.status, tc.body))
			resp, err := clientFor(srv.URL, nil).Post(context.Background(), testJob())
			var re *forward.RetryableError
			if !tc.retryable {
				if err != nil {
					t.Fatalf("Post: %v, want a final answer", err)
				}
				if resp.Status != tc.status || string(resp.Body) != tc.body {
					t.Fatalf("Post = %d %q, want %d %q", resp.Status, resp.Body, tc.status, tc.body)
				}
				return
			}
			if !errors.As(err, &re) {
				t.Fatalf("Post: %v (%T), want a *RetryableError", err, err)
			}
			if re.Status != tc.status || resp.Status != tc.status {
				t.Errorf("RetryableError.Status %d, Response.Status %d, want %d", re.Status, resp.Status, tc.status)
			}
			if len(resp.Body) != 0 {
				t.Errorf("retryable answer relayed a body %q", resp.Body)
			}
			if !strings.Contains(err.Error(), fmt.Sprint(tc.status)) {
				t.Errorf("error %q does not name the status", err)
			}
		})
	}
}

func TestClientPostRequest(t *testing.T) {
	tests := []struct {
		name     string
		url      string
		deviceID string
		wantURI  string
	}{
		{"device id in the path", "/ingest/{device_id}", "sensor_001", "/ingest/sensor_001"},
		{"device id twice", "/d/{device_id}/m/{device_id}", "s-1.a", "/d/s-1.a/m/s-1.a"},
		{"device id is path-escaped", "/ingest/{device_id}", "a/b c", "/ingest/a%2Fb%20c"},
		{"no placeholder", "/ingest", "sensor_001", "/ingest"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, reqs := backend(t, reply(200, "ok"))
			j := testJob()
			j.DeviceID = tc.deviceID
			if _, err := clientFor(srv.URL+tc.url, nil).Post(context.Background(), j); err != nil {
				t.Fatalf("Post: %v", err)
			}
			got := <-reqs
			if got.method != http.MethodPost || got.uri != tc.wantURI {
				t.Errorf("request %s %s, want POST %s", got.method, got.uri, tc.wantURI)
			}
			if !bytes.Equal(got.body, j.Payload) {
				t.Errorf("body %q, want the payload's exact bytes %q", got.body, j.Payload)
			}
			for k, want := range map[string]string{
				"Content-Type":       "application/json",
				"X-Device-ID":        tc.deviceID,
				"X-Message-ID":       j.MessageID,
				"X-Device-Timestamp": j.Timestamp,
				"Idempotency-Key":    j.MessageID,
			} {
				if v := got.header.Values(k); len(v) != 1 || v[0] != want {
					t.Errorf("header %s = %q, want [%q]", k, v, want)
				}
			}
		})
	}
}

func TestClientPostCapsResponseBody(t *testing.T) {
	tests := []struct {
		name     string
		max      int64
		bodyLen  int
		wantBody int
	}{
		{"under the cap", 16, 10, 10},
		{"at the cap", 16, 16, 16},
		{"over the cap", 16, 40, 16},
		{"far over the cap", 1024, 200 << 10, 1024},
		{"cap zero relays nothing", 0, 10, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := strings.Repeat("0123456789", tc.bodyLen/10+1)[:tc.bodyLen]
			var conns atomic.Int32
			srv := httptest.NewUnstartedServer(reply(200, body))
			srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					conns.Add(1)
				}
			}
			srv.Start()
			defer srv.Close()
			c := clientFor(srv.URL, func(c *forward.Config) { c.MaxResponseBytes = tc.max })
			for i := range 3 {
				resp, err := c.Post(context.Background(), testJob())
				if err != nil {
					t.Fatalf("Post %d: %v", i, err)
				}
				if string(resp.Body) != body[:tc.wantBody] {
					t.Fatalf("Post %d: body of %d bytes, want the first %d", i, len(resp.Body), tc.wantBody)
				}
			}
			// The unread rest is drained, so the connection is kept alive.
			if n := conns.Load(); n != 1 {
				t.Errorf("3 sequential POSTs used %d connections, want 1 (keep-alive)", n)
			}
		})
	}
}

func TestClientPostTransportFailuresAreRetryable(t *testing.T) {
	// A port nobody listens on: bind one, then close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String() + "/ingest"
	ln.Close()

	// The handlers read the request body first: only then does the server
	// notice the client hanging up and cancel r.Context().
	release := make(chan struct{})
	hang := func(w http.ResponseWriter, r *http.Request) { // answers nothing until the client gives up
		_, _ = io.Copy(io.Discard, r.Body) // draining only
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}
	slowBody := func(w http.ResponseWriter, r *http.Request) { // headers now, body never
		_, _ = io.Copy(io.Discard, r.Body) // draining only
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "partial") // the client may have gone
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}
	hangSrv := httptest.NewServer(http.HandlerFunc(hang))
	t.Cleanup(hangSrv.Close)
	slowSrv := httptest.NewServer(http.HandlerFunc(slowBody))
	t.Cleanup(slowSrv.Close)
	t.Cleanup(func() { close(release) }) // runs first: no handler outlives the test
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name    string
		url     string
		ctx     context.Context
		timeout time.Duration
		check   func(err error) bool
	}{
		{"connection refused", refused, context.Background(), time.Second,
			func(err error) bool { var op *net.OpError; return errors.As(err, &op) }},
		{"no answer within the timeout", hangSrv.URL, context.Background(), 100 * time.Millisecond,
			func(err error) bool { var ne net.Error; return errors.As(err, &ne) && ne.Timeout() }},
		{"body not finished within the timeout", slowSrv.URL, context.Background(), 100 * time.Millisecond,
			func(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "read response: ") }},
		{"context cancelled", hangSrv.URL, cancelled, time.Second,
			func(err error) bool { return errors.Is(err, context.Canceled) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := clientFor(tc.url, func(c *forward.Config) { c.Timeout = tc.timeout })
			resp, err := c.Post(tc.ctx, testJob())
			var re *forward.RetryableError
			if !errors.As(err, &re) {
				t.Fatalf("Post: %v (%T), want a *RetryableError", err, err)
			}
			if re.Status != 0 || resp.Status != 0 {
				t.Errorf("transport failure with status %d / %d, want 0", re.Status, resp.Status)
			}
			if !strings.HasPrefix(err.Error(), "backend unreachable: ") {
				t.Errorf("error %q, want it to start with %q", err, "backend unreachable: ")
			}
			if !tc.check(errors.Unwrap(err)) {
				t.Errorf("wrapped error %v is not the expected kind", errors.Unwrap(err))
			}
		})
	}
}

// TestClientPostUnbuildableRequestIsFinal: a request that cannot be built
// will never succeed, so it is not a RetryableError.
func TestClientPostUnbuildableRequestIsFinal(t *testing.T) {
	c := clientFor("http://bad host/{device_id}", nil)
	_, err := c.Post(context.Background(), testJob())
	var re *forward.RetryableError
	if err == nil || errors.As(err, &re) {
		t.Fatalf("Post to an invalid URL: %v, want a plain (non-retryable) error", err)
	}
}

// TestClientPostBatchLimits adds to batch_test.go's TestPostBatch: the
// per-item body cap, the whole-response size limit, and the other
// retryable whole-batch statuses.
func TestClientPostBatchLimits(t *testing.T) {
	jobs := []*forward.Job{
		{Seq: 1, DeviceID: "a", MessageID: "m-a", Timestamp: "1727712000", Payload: []byte(`{"t":1}`)},
		{Seq: 2, DeviceID: "b", MessageID: "m-b", Timestamp: "1727712001", Payload: []byte(`[1,2]`)},
	}
	const itemMax = 4 // per item; the whole answer may hold 2×(4+64)+2 = 138 bytes
	tests := []struct {
		name      string
		status    int
		body      string
		retryable bool
		want      []forward.Response // when not retryable
	}{
		{"item bodies capped at max_response_bytes", 200, `[{"status":200,"body":"0123456789"},{"status":201,"body":1}]`, false,
			[]forward.Response{{Status: 200, Body: []byte(`"012`)}, {Status: 201, Body: []byte("1")}}},
		{"a 5xx item is returned, not retried here", 200, `[{"status":503,"body":null},{"status":200,"body":{}}]`, false,
			[]forward.Response{{Status: 503, Body: []byte("null")}, {Status: 200, Body: []byte("{}")}}},
		{"answer over the whole limit", 200, `[{"status":200,"body":"` + strings.Repeat("x", 140) + `"},{"status":200,"body":1}]`, true, nil},
		{"whole-batch 429", 429, ``, true, nil},
		{"whole-batch 408", 408, ``, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := backend(t, reply(tc.status, tc.body))
			c := clientFor(srv.URL+"/{device_id}", func(c *forward.Config) {
				c.BatchMax, c.BatchURL, c.MaxResponseBytes = 10, srv.URL+"/batch", itemMax
			})
			resps, err := c.PostBatch(context.Background(), jobs)
			if tc.retryable {
				var re *forward.RetryableError
				if !errors.As(err, &re) {
					t.Fatalf("PostBatch: %v, want a *RetryableError", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("PostBatch: %v", err)
			}
			if len(resps) != len(tc.want) {
				t.Fatalf("%d results, want %d", len(resps), len(tc.want))
			}
			for i := range tc.want {
				if resps[i].Status != tc.want[i].Status || !bytes.Equal(resps[i].Body, tc.want[i].Body) {
					t.Errorf("result %d = %d %s, want %d %s", i, resps[i].Status, resps[i].Body, tc.want[i].Status, tc.want[i].Body)
				}
			}
		})
	}
}
