package samplebackend

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/backendsig"
	"github.com/iotgw/iotgw/pkg/forward"
)

// Options are the settings of a sample backend (the flags of "iotgw
// backend").
type Options struct {
	// Listen is the address to listen on ("127.0.0.1:8080"; port 0 picks a
	// free one, which Run prints).
	Listen string
	// LogPath, when set, gets one JSON line (a Record) per request.
	LogPath string
	// FailStatus is answered to every POST during a simulated outage
	// (100..599; 503 by default).
	FailStatus int
	// FailFor simulates an outage for this long after start (0: none).
	FailFor time.Duration
	// Delay is waited before answering each POST.
	Delay time.Duration
	// BearerTokenFile, when set, makes every request (deliveries and the
	// control endpoints) carry "Authorization: Bearer <its token>".
	BearerTokenFile string
	// SigningKeyFile, when set, makes every request carry a valid
	// X-Iotgw-Signature of SigningScheme made with its key.
	SigningKeyFile string
	// SigningScheme is backendsig.SchemeV2 (the default) or SchemeV1.
	SigningScheme string
	// SigningMaxSkew bounds how far X-Iotgw-Timestamp may be from now.
	SigningMaxSkew time.Duration
}

// DefaultOptions returns the defaults of "iotgw backend".
func DefaultOptions() Options {
	return Options{Listen: "127.0.0.1:8080", FailStatus: http.StatusServiceUnavailable,
		SigningScheme: backendsig.SchemeV2, SigningMaxSkew: 5 * time.Minute}
}

// Validate checks o without reading any file.
func (o Options) Validate() error {
	if o.FailStatus < 100 || o.FailStatus > 599 {
		return fmt.Errorf("--fail-status must be an HTTP status 100..599, got %d", o.FailStatus)
	}
	if o.FailFor < 0 || o.Delay < 0 || o.SigningMaxSkew <= 0 {
		return errors.New("--fail-for and --delay must not be negative, --signing-max-skew must be positive")
	}
	return backendsig.CheckScheme("--signature-scheme", o.SigningScheme)
}

// New returns a backend for o (without its request log), reading the
// token and key files the gateway's way.
func New(o Options) (*Backend, error) {
	b := &Backend{delay: o.Delay, now: time.Now, seen: map[string]int{}, byDevice: map[string]int{}, maxSkew: o.SigningMaxSkew, scheme: o.SigningScheme}
	if o.BearerTokenFile != "" {
		tok, err := forward.ReadBearerToken(o.BearerTokenFile)
		if err != nil {
			return nil, fmt.Errorf("backend: --bearer-token-file: %w", err)
		}
		h := sha256.Sum256([]byte("Bearer " + tok))
		b.wantAuth = h[:]
	}
	if o.SigningKeyFile != "" {
		key, err := forward.ReadSigningKey(o.SigningKeyFile)
		if err != nil {
			return nil, fmt.Errorf("backend: --signing-key-file: %w", err)
		}
		if err := backendsig.CheckScheme("backend: --signature-scheme", o.SigningScheme); err != nil {
			return nil, err
		}
		b.signingKey = key
	}
	return b, nil
}

// Run serves a backend for o until ctx is cancelled, then shuts it down
// within 5 s. It prints "backend listening on http://ADDR" to out once it
// listens, and one line per refused request to errOut.
func Run(ctx context.Context, o Options, out, errOut io.Writer) error {
	b, err := New(o)
	if err != nil {
		return err
	}
	b.errOut = errOut
	if o.LogPath != "" {
		f, err := os.OpenFile(o.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("backend log: %w", err)
		}
		defer f.Close()
		b.log = f
	}
	if o.FailFor > 0 {
		b.failUntil, b.failStatus = b.now().Add(o.FailFor), o.FailStatus
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	srv := &http.Server{
		Handler:           b.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      o.Delay + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	fmt.Fprintf(out, "backend listening on http://%s\n", ln.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("backend: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("backend shutdown: %w", err)
	}
	return nil
}

// maxBackendBody bounds a request body; the gateway sends at most 64 KiB.
const maxBackendBody = 1 << 20

// Backend is the state of a sample backend. Its handlers are safe for
// concurrent use.
type Backend struct {
	delay time.Duration
	now   func() time.Time
	// Trust: wantAuth is SHA-256 of the expected Authorization value (nil:
	// none required); signingKey checks X-Iotgw-Signature (nil: none
	// required) within maxSkew. errOut gets one line per refused request.
	wantAuth   []byte
	signingKey []byte
	scheme     string
	maxSkew    time.Duration
	errOut     io.Writer

	mu           sync.Mutex
	log          io.Writer // nil: no request log
	failUntil    time.Time
	failStatus   int
	requests     int
	ok           int
	failed       int
	dups         int
	unauthorized int
	seen         map[string]int // message id → 200s answered
	byDevice     map[string]int // X-Device-ID → 200s answered
}

// Record is one line of the request log (Options.LogPath).
type Record struct {
	Time           string          `json:"time"`
	PathDeviceID   string          `json:"path_device_id"`
	DeviceID       string          `json:"device_id"`
	MessageID      string          `json:"message_id"`
	Timestamp      string          `json:"timestamp"`
	Counter        string          `json:"counter,omitempty"` // a counter-mode message's, instead of a timestamp
	IdempotencyKey string          `json:"idempotency_key"`
	Status         int             `json:"status"`
	Body           json.RawMessage `json:"body"`
}

// Stats is the body of GET /stats.
type Stats struct {
	Requests       int            `json:"requests"`
	OK             int            `json:"ok"`
	Failed         int            `json:"failed"`
	UniqueMessages int            `json:"unique_messages"`
	Duplicates     int            `json:"duplicates"`
	Unauthorized   int            `json:"unauthorized"`
	ByDevice       map[string]int `json:"by_device"`
	MessageOK      *int           `json:"message_ok,omitempty"`
}

// Handler returns the backend's routes: POST /batch, GET /stats, POST
// /fail, GET /healthz, and a POST to any other path as one delivery.
func (b *Backend) Handler() http.Handler {
	mux := http.NewServeMux()
	// The control endpoints need the same credentials as a delivery: an
	// unauthenticated POST /fail?status=410 would make the gateway drop
	// its next message (410 is final).
	mux.HandleFunc("GET /stats", b.control(b.stats))
	mux.HandleFunc("POST /fail", b.control(b.fail))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n") //nolint:errcheck
	})
	mux.HandleFunc("POST /batch", b.ingestBatch)
	mux.HandleFunc("/", b.ingest)
	return mux
}

// ingest records one forwarded message and answers it.
func (b *Backend) ingest(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	arrived := b.now()
	body, ok := b.readAuthorized(w, r)
	if !ok {
		return
	}
	if b.delay > 0 {
		select {
		case <-time.After(b.delay):
		case <-r.Context().Done():
			return
		}
	}
	pathDev, _ := url.PathUnescape(path.Base(r.URL.EscapedPath()))
	rec := Record{
		Time:         arrived.UTC().Format(time.RFC3339Nano),
		PathDeviceID: pathDev,
		DeviceID:     r.Header.Get("X-Device-ID"),
		// The signed Idempotency-Key is the message id (PROTOCOL.md 4b:
		// X-Message-ID is not signed; VerifyRequest refuses a different
		// one, but not a missing one).
		MessageID:      cmp.Or(r.Header.Get("Idempotency-Key"), r.Header.Get("X-Message-ID")),
		Timestamp:      r.Header.Get("X-Device-Timestamp"),
		Counter:        r.Header.Get("X-Device-Counter"),
		IdempotencyKey: r.Header.Get("Idempotency-Key"),
		Body:           body,
	}
	if !json.Valid(body) {
		rec.Body, _ = json.Marshal(string(body))
	}

	logErr := b.record(&rec, arrived)
	if logErr != nil {
		// A delivery the log cannot show would mislead a test: fail it, so
		// the gateway retries.
		http.Error(w, "cannot write request log: "+logErr.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rec.Status)
	if rec.Status != http.StatusOK {
		io.WriteString(w, `{"ok":false,"error":"simulated outage"}`) //nolint:errcheck
		return
	}
	reply, _ := json.Marshal(struct {
		OK       bool   `json:"ok"`
		Received string `json:"received"`
	}{true, rec.MessageID})
	w.Write(reply) //nolint:errcheck
}

// control wraps a control endpoint (/stats, /fail): it is served only to a
// request that passes authorized, as a POST to /ingest must, with an
// empty body (it signs method, target and timestamp).
func (b *Backend) control(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, ok := b.readAuthorized(w, r); ok {
			h(w, r)
		}
	}
}

// readAuthorized reads r's body (at most maxBackendBody) and checks the
// request's credentials against it (authorized). It answers the request
// itself and reports false when either fails.
func (b *Backend) readAuthorized(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBackendBody))
	r.Body.Close()
	if err != nil {
		http.Error(w, "cannot read body: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	return body, b.authorized(w, r, body)
}

// authorized checks the bearer token and the signature required, if any.
// When one fails it answers 401, counts it and logs one line naming the
// reason (never the credentials), and returns false.
func (b *Backend) authorized(w http.ResponseWriter, r *http.Request, body []byte) bool {
	var reason string
	if b.wantAuth != nil {
		got := sha256.Sum256([]byte(r.Header.Get("Authorization")))
		if subtle.ConstantTimeCompare(got[:], b.wantAuth) != 1 {
			reason = "missing or wrong bearer token"
		}
	}
	if reason == "" && b.signingKey != nil {
		if err := backendsig.VerifyRequest(b.signingKey, b.scheme, r, body, b.now(), b.maxSkew); err != nil {
			reason = err.Error()
		}
	}
	if reason == "" {
		return true
	}
	b.mu.Lock()
	b.unauthorized++
	b.mu.Unlock()
	if b.errOut != nil {
		fmt.Fprintf(b.errOut, "backend: 401 %s %q from %s (X-Device-Id %q): %s\n", r.Method, r.URL.Path, r.RemoteAddr, r.Header.Get("X-Device-Id"), reason)
	}
	http.Error(w, "unauthorized: "+reason, http.StatusUnauthorized)
	return false
}

// record counts rec (one delivered message), sets its Status (200, or the
// simulated outage's) and appends it to the log.
func (b *Backend) record(rec *Record, arrived time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.requests++
	rec.Status = http.StatusOK
	if arrived.Before(b.failUntil) {
		rec.Status = b.failStatus
		b.failed++
	} else {
		b.ok++
		if b.seen[rec.MessageID] > 0 {
			b.dups++
		}
		b.seen[rec.MessageID]++
		b.byDevice[rec.DeviceID]++
	}
	if b.log == nil {
		return nil
	}
	line, _ := json.Marshal(rec) // fields are strings, an int and valid JSON
	_, err := b.log.Write(append(line, '\n'))
	return err
}

// ingestBatch answers the gateway's batch mode (backend.batch_max > 1): a
// JSON array of {"device_id","message_id","timestamp","payload"}, answered
// with an array of {"status","body"} in the same order. Each item is
// recorded as ingest records one message (path_device_id is empty).
func (b *Backend) ingestBatch(w http.ResponseWriter, r *http.Request) {
	arrived := b.now()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64*maxBackendBody))
	r.Body.Close()
	if err != nil {
		http.Error(w, "cannot read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !b.authorized(w, r, body) {
		return
	}
	var items []struct {
		DeviceID  string          `json:"device_id"`
		MessageID string          `json:"message_id"`
		Timestamp json.Number     `json:"timestamp"`
		Counter   json.Number     `json:"counter"`
		Payload   json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(body, &items); err != nil {
		http.Error(w, "want a JSON array of {device_id, message_id, timestamp, payload}: "+err.Error(), http.StatusBadRequest)
		return
	}
	if b.delay > 0 {
		select {
		case <-time.After(b.delay):
		case <-r.Context().Done():
			return
		}
	}
	type result struct {
		Status int `json:"status"`
		Body   any `json:"body"`
	}
	out := make([]result, len(items))
	for i, it := range items {
		rec := Record{Time: arrived.UTC().Format(time.RFC3339Nano), DeviceID: it.DeviceID, MessageID: it.MessageID,
			Timestamp: it.Timestamp.String(), Counter: it.Counter.String(), IdempotencyKey: it.MessageID, Body: it.Payload}
		if err := b.record(&rec, arrived); err != nil {
			http.Error(w, "cannot write request log: "+err.Error(), http.StatusInternalServerError)
			return
		}
		out[i] = result{Status: rec.Status, Body: map[string]any{"ok": rec.Status == http.StatusOK, "received": it.MessageID}}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out) //nolint:errcheck
}

// stats serves the counters.
func (b *Backend) stats(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	s := Stats{Requests: b.requests, OK: b.ok, Failed: b.failed, UniqueMessages: len(b.seen),
		Duplicates: b.dups, Unauthorized: b.unauthorized, ByDevice: make(map[string]int, len(b.byDevice))}
	for k, v := range b.byDevice {
		s.ByDevice[k] = v
	}
	if id := r.URL.Query().Get("message_id"); id != "" {
		n := b.seen[id]
		s.MessageOK = &n
	}
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s) //nolint:errcheck
}

// fail starts (or, with for=0, ends) a simulated outage.
func (b *Backend) fail(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d, err := time.ParseDuration(q.Get("for"))
	if err != nil || d < 0 {
		http.Error(w, "want ?for=DURATION (e.g. 10s; 0 ends an outage)", http.StatusBadRequest)
		return
	}
	status := http.StatusServiceUnavailable
	if s := q.Get("status"); s != "" {
		if status, err = strconv.Atoi(s); err != nil || status < 100 || status > 599 {
			http.Error(w, "status must be 100..599", http.StatusBadRequest)
			return
		}
	}
	b.mu.Lock()
	b.failUntil, b.failStatus = b.now().Add(d), status
	b.mu.Unlock()
	io.WriteString(w, "ok\n") //nolint:errcheck
}
