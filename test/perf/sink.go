package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Sink is the HTTP backend of the gateway runs. It answers every POST to
// /ingest/<device_id> with 200 {"ok":true} and hands the body, with the
// time the request arrived, to the current Recorder. Requests that come
// while no recorder is set are counted as strays.
type Sink struct {
	// URL is the gateway's backend.url: http://127.0.0.1:PORT/ingest/{device_id}.
	URL string
	// BatchURL is backend.batch_url for the gateway's batch mode:
	// http://127.0.0.1:PORT/batch. Each item is recorded as one message.
	BatchURL string

	srv    *http.Server
	rec    atomic.Pointer[Recorder]
	strays atomic.Int64
	bufs   sync.Pool
}

// StartSink starts a sink on a free port of 127.0.0.1; it stops when the
// test ends.
func StartSink(t testing.TB) *Sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sink: %v", err)
	}
	s := &Sink{URL: "http://" + ln.Addr().String() + "/ingest/{device_id}", BatchURL: "http://" + ln.Addr().String() + "/batch"}
	s.bufs.New = func() any { b := make([]byte, 0, 512); return &b }
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln) //nolint:errcheck // returns ErrServerClosed at cleanup
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if s.srv.Shutdown(ctx) != nil {
			s.srv.Close()
		}
	})
	return s
}

// Expect makes rec the recorder of the requests to come (nil: none).
func (s *Sink) Expect(rec *Recorder) { s.rec.Store(rec) }

// Strays returns the number of requests that came while no recorder was set.
func (s *Sink) Strays() int64 { return s.strays.Load() }

// ServeHTTP records one message. The arrival time is taken before the body
// is read, as a backend would see the request begin.
func (s *Sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	at := time.Now().UnixNano()
	bp := s.bufs.Get().(*[]byte)
	body, err := readAll(r.Body, (*bp)[:0])
	if err != nil {
		s.bufs.Put(bp)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.URL.Path == "/batch" {
		s.batch(w, body, at)
		s.bufs.Put(bp)
		return
	}
	if rec := s.rec.Load(); rec != nil {
		rec.Record(strings.TrimPrefix(r.URL.Path, "/ingest/"), body, at)
	} else {
		s.strays.Add(1)
	}
	*bp = body
	s.bufs.Put(bp)
	h := w.Header()
	h["Content-Type"] = []string{"application/json"}
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, `{"ok":true}`) //nolint:errcheck // the gateway's problem if it went away
}

// readAll appends r to b.
func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// batch records each item of a batch-mode POST and answers them all 200.
func (s *Sink) batch(w http.ResponseWriter, body []byte, at int64) {
	var items []struct {
		DeviceID string          `json:"device_id"`
		Payload  json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(body, &items); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rec := s.rec.Load()
	var out bytes.Buffer
	out.WriteByte('[')
	for i, it := range items {
		if rec != nil {
			rec.Record(it.DeviceID, it.Payload, at)
		} else {
			s.strays.Add(1)
		}
		if i > 0 {
			out.WriteByte(',')
		}
		out.WriteString(`{"status":200,"body":{"ok":true}}`)
	}
	out.WriteByte(']')
	w.Header()["Content-Type"] = []string{"application/json"}
	w.Write(out.Bytes()) //nolint:errcheck // the gateway's problem if it went away
}
