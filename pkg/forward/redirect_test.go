package forward_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
)

var redirectCodes = []int{301, 302, 303, 307, 308}

// redirecting starts a backend that answers every request with code and a
// Location on a second listener, and returns the backend's URL and a
// counter of the requests the second listener received.
func redirecting(t *testing.T, code int) (string, *atomic.Int32) {
	t.Helper()
	var stolen atomic.Int32
	thief := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		stolen.Add(1)
		if _, err := w.Write([]byte(`[{"status":200,"body":{}}]`)); err != nil { // a batch answer too
			t.Errorf("thief reply: %v", err)
		}
	}))
	t.Cleanup(thief.Close)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, thief.URL+"/steal", code)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &stolen
}

// TestClientNeverFollowsRedirects (issue 9, finding 4): a 3xx is neither
// followed (a 301/302/303 used to become a GET counted as 200; a 307/308
// re-POSTed the payload and device headers to the Location) nor a
// delivery: Post and PostBatch return a final *RedirectError naming the
// status, and the second listener receives nothing.
func TestClientNeverFollowsRedirects(t *testing.T) {
	for _, code := range redirectCodes {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			url, stolen := redirecting(t, code)
			c := clientFor(url+"/ingest/{device_id}", func(c *forward.Config) { c.BatchMax, c.BatchURL = 8, url+"/batch" })
			resp, err := c.Post(context.Background(), testJob())
			checkRedirectErr(t, "Post", code, err)
			if resp.Status >= 200 && resp.Status < 300 {
				t.Errorf("Post returned %d: a redirect counted as delivered", resp.Status)
			}
			resps, err := c.PostBatch(context.Background(), []*forward.Job{testJob()})
			checkRedirectErr(t, "PostBatch", code, err)
			if resps != nil {
				t.Errorf("PostBatch returned responses %v for a redirect", resps)
			}
			if n := stolen.Load(); n != 0 {
				t.Errorf("the redirect target received %d requests, want 0", n)
			}
		})
	}
}

func checkRedirectErr(t *testing.T, what string, code int, err error) {
	t.Helper()
	var re *forward.RetryableError
	var rd *forward.RedirectError
	switch {
	case err == nil:
		t.Errorf("%s: no error for a %d", what, code)
	case errors.As(err, &re):
		t.Errorf("%s: %v is retryable, want final", what, err)
	case !errors.As(err, &rd) || rd.Status != code:
		t.Errorf("%s: %v (%T), want a *RedirectError with status %d", what, err, err, code)
	case !strings.Contains(err.Error(), fmt.Sprint(code)) || !strings.Contains(err.Error(), "redirect"):
		t.Errorf("%s: error %q does not name the redirect and its status", what, err)
	}
}

// TestDispatcherDeadLettersRedirects: through a real Client, a redirect
// settles the Job dead at once (one attempt, no retry), with the reason,
// in single and batch mode, and a batch item answered 3xx likewise.
func TestDispatcherDeadLettersRedirects(t *testing.T) {
	for _, batch := range []bool{false, true} {
		for _, code := range redirectCodes {
			t.Run(fmt.Sprintf("batch=%v/%d", batch, code), func(t *testing.T) {
				url, stolen := redirecting(t, code)
				cfg := testConfig(func(c *forward.Config) {
					c.URL = url + "/ingest/{device_id}"
					if batch {
						c.BatchMax, c.BatchURL, c.Workers = 4, url+"/batch", 1
					}
				})
				h := startDispatcher(t, cfg, clientFor(cfg.URL, func(c *forward.Config) { *c = cfg }), neverOpens(time.Now), time.Now)
				j := testJob()
				j.ReceivedAt = time.Now()
				h.d.Submit(j)
				s := h.waitSettled(t, 1)[0]
				if !s.out.Dead || s.out.Err == nil || !strings.Contains(s.out.Err.Error(), fmt.Sprint(code)) {
					t.Fatalf("outcome %+v, want dead with an error naming %d", s.out, code)
				}
				if s.job.Attempts != 1 {
					t.Errorf("attempts %d, want 1", s.job.Attempts)
				}
				if len(h.retries) != 0 {
					t.Errorf("%d retries of a redirect, want 0", len(h.retries))
				}
				if n := stolen.Load(); n != 0 {
					t.Errorf("the redirect target received %d requests, want 0", n)
				}
			})
		}
	}
}

// TestDispatcherDeadLettersRedirectItem: a batch answer whose item status
// is a 3xx is not a delivery either.
func TestDispatcherDeadLettersRedirectItem(t *testing.T) {
	srv, _ := backend(t, reply(200, `[{"status":302,"body":null}]`))
	cfg := testConfig(func(c *forward.Config) { c.BatchMax, c.BatchURL, c.Workers = 4, srv.URL+"/batch", 1 })
	h := startDispatcher(t, cfg, clientFor(cfg.URL, func(c *forward.Config) { *c = cfg }), neverOpens(time.Now), time.Now)
	j := testJob()
	j.ReceivedAt = time.Now()
	h.d.Submit(j)
	s := h.waitSettled(t, 1)[0]
	if !s.out.Dead || s.out.Err == nil || !strings.Contains(s.out.Err.Error(), "302") {
		t.Fatalf("outcome %+v, want dead with an error naming 302", s.out)
	}
}
