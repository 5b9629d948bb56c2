package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBackendRedirectNotFollowed (issue 9, finding 4): a backend answering
// 301, 302, 303, 307 or 308 with a Location on a second listener. Before
// the fix a 301/302/303 became a GET counted as delivered (and the row
// deleted) and a 307/308 re-POSTed payload and device headers to the
// Location. Now the second listener receives nothing, the message is
// dead-lettered with a reason naming the 3xx, and nothing counts as
// delivered. In batch mode too.
func TestBackendRedirectNotFollowed(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			f := newFixture(t, "redir_dev")
			var stolen atomic.Int32
			thief := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				stolen.Add(1)
				if _, err := io.Copy(io.Discard, r.Body); err != nil {
					t.Errorf("thief: read body: %v", err)
				}
				if _, err := io.WriteString(w, `[{"status":200,"body":{}}]`); err != nil {
					t.Errorf("thief: reply: %v", err)
				}
			}))
			t.Cleanup(thief.Close)
			// The payload says which redirect to answer: {"code":N}.
			var wrongPath atomic.Int32 // batch mode posting elsewhere than /batch, or the reverse
			redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if batch != (r.URL.Path == "/batch") {
					wrongPath.Add(1)
				}
				body, _ := io.ReadAll(r.Body)
				var p struct{ Code int }
				if batch {
					var items []struct{ Payload json.RawMessage }
					if err := json.Unmarshal(body, &items); err != nil {
						http.Error(w, "want a batch", 400)
						return
					}
					if len(items) > 0 {
						body = items[0].Payload
					}
				}
				if json.Unmarshal(body, &p) != nil || p.Code < 300 {
					http.Error(w, "want {code}", 400)
					return
				}
				http.Redirect(w, r, thief.URL+"/steal", p.Code)
			}))
			t.Cleanup(redirector.Close)
			o := gatewayOpts{backendURL: redirector.URL + "/ingest/{device_id}", maxAttempts: 3}
			if batch {
				o.backendExtra = "  batch_max: 8\n  batch_url: " + redirector.URL + "/batch\n  workers: 1\n"
			}
			g := f.startGateway(o)
			d := f.device("redir_dev")
			ids := map[int]string{}
			for i, code := range []int{301, 302, 303, 307, 308} {
				raw, id := d.signed(fmt.Sprintf(`{"code":%d}`, code), time.Now().Unix())
				ids[code] = id
				d.publish("", raw)
				// One at a time: each settles (one way or another) before the next.
				settled := func() float64 {
					return g.metric(`iotgw_forward_total{result="dead"}`) + g.metric(`iotgw_forward_total{result="ok"}`) +
						g.metric(`iotgw_forward_total{result="final"}`)
				}
				for end := time.Now().Add(15 * time.Second); settled() < float64(i+1); time.Sleep(20 * time.Millisecond) {
					if time.Now().After(end) {
						t.Fatalf("%d: message not settled within 15s", code)
					}
				}
			}
			if n := stolen.Load(); n != 0 {
				t.Errorf("the redirect target received %d requests, want 0", n)
			}
			if n := wrongPath.Load(); n != 0 {
				t.Errorf("%d requests to the wrong endpoint for batch=%v", n, batch)
			}
			for _, r := range []string{"ok", "final", "retry"} {
				if v := g.metric(`iotgw_forward_total{result="` + r + `"}`); v != 0 {
					t.Errorf(`iotgw_forward_total{result=%q} = %v, want 0`, r, v)
				}
			}
			if v := g.metric(`iotgw_forward_total{result="dead"}`); v != 5 {
				t.Errorf(`iotgw_forward_total{result="dead"} = %v, want 5`, v)
			}
			out, err := runCLI(f.bin, "", "deadletter", "list", "--outbox", f.outbox())
			if err != nil {
				t.Fatalf("deadletter list: %v\n%s", err, out)
			}
			for code, id := range ids {
				line := ""
				for _, l := range strings.Split(out, "\n") {
					if strings.Contains(l, id) {
						line = l
					}
				}
				if !strings.Contains(line, fmt.Sprintf("answered %d", code)) || !strings.Contains(line, "redirect") {
					t.Errorf("%d: dead letter %q does not name the redirect\n%s", code, line, out)
				}
			}
		})
	}
}
