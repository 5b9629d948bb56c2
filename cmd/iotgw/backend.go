package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
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

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/backendsig"
	"github.com/iotgw/iotgw/pkg/forward"
)

func init() { commands = append(commands, newBackendCmd) }

// backendOptions are the flags of "iotgw backend".
type backendOptions struct {
	listen     string
	logPath    string
	failStatus int
	failFor    time.Duration
	delay      time.Duration
	// Backend trust (docs/PROTOCOL.md 4b).
	bearerTokenFile string
	signingKeyFile  string
	signingScheme   string
	signingMaxSkew  time.Duration
}

func newBackendCmd() *cobra.Command {
	var o backendOptions
	cmd := &cobra.Command{
		Use:   "backend [--listen ADDR] [--log FILE] [--fail-status N --fail-for D] [--delay D] [--bearer-token-file F] [--signing-key-file F [--signature-scheme v2|v1]]",
		Short: "Run a sample HTTP backend that records what the gateway forwards",
		Long: `backend is a small HTTP server standing in for the real backend, for the
demo and the end-to-end tests.

POST to any path (the gateway uses /ingest/{device_id}) is recorded and
answered 200 {"ok":true,"received":"<message id>"} (the Idempotency-Key,
else X-Message-ID). With --log, each
request appends one JSON line to FILE:

  {"time":"<RFC 3339>","path_device_id":"<last path segment>","device_id":"<X-Device-ID>",
   "message_id":"<message id>","timestamp":"<X-Device-Timestamp>",
   "idempotency_key":"<Idempotency-Key>","status":200,"body":<request body>}

"status" is what the backend answered, so count lines with status 200 to
count deliveries. "body" is the request body embedded as JSON (as a string
when it is not valid JSON).

GET /stats returns counters as JSON: requests, ok, failed, unique_messages,
duplicates (200s for a message id already answered 200) and by_device;
GET /stats?message_id=ID adds "message_ok", that id's 200 count.

POST /batch takes the gateway's batch mode (backend.batch_max > 1,
backend.batch_url = http://ADDR/batch): each item is recorded as above and
answered in a JSON array of {"status","body"}.

Fault simulation: --fail-for D answers --fail-status (default 503) to every
POST for D after start; POST /fail?for=D[&status=N] starts such an outage
at run time (for=0 ends it). --delay D waits D before answering each POST.
GET /stats and POST /fail need the same credentials as a delivery (below):
the token, and a signature over the method, the target and the timestamp
with an empty body.

Backend trust (docs/PROTOCOL.md 4b): with --bearer-token-file every POST
must carry "Authorization: Bearer <the file's token>"; with
--signing-key-file every POST must carry a valid X-Iotgw-Signature of
--signature-scheme (v2, the default, signs every header the gateway sets;
v1, of a gateway with backend.signature_scheme v1, leaves
X-Device-Timestamp and X-Iotgw-Seq unsigned), whose X-Iotgw-Timestamp is
within --signing-max-skew of now. Anything else
is answered 401, counted in /stats as "unauthorized", not recorded, and
logged as one line on stderr naming the reason. The files must be chmod
600, as the gateway's (backend.bearer_token_file, backend.signing_key_file).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.failStatus < 100 || o.failStatus > 599 {
				return usagef("backend: --fail-status must be an HTTP status 100..599, got %d", o.failStatus)
			}
			if o.failFor < 0 || o.delay < 0 || o.signingMaxSkew <= 0 {
				return usagef("backend: --fail-for and --delay must not be negative, --signing-max-skew must be positive")
			}
			if err := backendsig.CheckScheme("backend: --signature-scheme", o.signingScheme); err != nil {
				return usagef("%v", err) // a usage error (exit 2) before any file is read
			}
			return runBackend(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to listen on (port 0 picks a free one; the address is printed)")
	f.StringVar(&o.logPath, "log", "", "append one JSON line per request to this file")
	f.IntVar(&o.failStatus, "fail-status", http.StatusServiceUnavailable, "status answered during a simulated outage")
	f.DurationVar(&o.failFor, "fail-for", 0, "simulate an outage for this long after start (0: none)")
	f.DurationVar(&o.delay, "delay", 0, "wait this long before answering each POST")
	f.StringVar(&o.bearerTokenFile, "bearer-token-file", "", "require Authorization: Bearer <token in this file> (chmod 600)")
	f.StringVar(&o.signingKeyFile, "signing-key-file", "", "require a valid X-Iotgw-Signature made with the key in this file (chmod 600)")
	f.StringVar(&o.signingScheme, "signature-scheme", backendsig.SchemeV2, "the scheme X-Iotgw-Signature must use: v2 or v1 (the gateway's backend.signature_scheme)")
	f.DurationVar(&o.signingMaxSkew, "signing-max-skew", 5*time.Minute, "how far X-Iotgw-Timestamp may be from now")
	return cmd
}

// newBackend returns a backend for o (without its request log), reading
// the token and key files the gateway's way.
func newBackend(o backendOptions) (*backend, error) {
	b := &backend{delay: o.delay, now: time.Now, seen: map[string]int{}, byDevice: map[string]int{}, maxSkew: o.signingMaxSkew, scheme: o.signingScheme}
	if o.bearerTokenFile != "" {
		tok, err := forward.ReadBearerToken(o.bearerTokenFile)
		if err != nil {
			return nil, fmt.Errorf("backend: --bearer-token-file: %w", err)
		}
		h := sha256.Sum256([]byte("Bearer " + tok))
		b.wantAuth = h[:]
	}
	if o.signingKeyFile != "" {
		key, err := forward.ReadSigningKey(o.signingKeyFile)
		if err != nil {
			return nil, fmt.Errorf("backend: --signing-key-file: %w", err)
		}
		if err := backendsig.CheckScheme("backend: --signature-scheme", o.signingScheme); err != nil {
			return nil, err
		}
		b.signingKey = key
	}
	return b, nil
}

func runBackend(ctx context.Context, o backendOptions, out, errOut io.Writer) error {
	b, err := newBackend(o)
	if err != nil {
		return err
	}
	b.errOut = errOut
	if o.logPath != "" {
		f, err := os.OpenFile(o.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("backend log: %w", err)
		}
		defer f.Close()
		b.log = f
	}
	if o.failFor > 0 {
		b.failUntil, b.failStatus = b.now().Add(o.failFor), o.failStatus
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("backend: %w", err)
	}
	srv := &http.Server{
		Handler:           b.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      o.delay + 30*time.Second,
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

// backend is the state of "iotgw backend". Its handlers are safe for
// concurrent use.
type backend struct {
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

// backendRecord is one line of the --log file.
type backendRecord struct {
	Time           string          `json:"time"`
	PathDeviceID   string          `json:"path_device_id"`
	DeviceID       string          `json:"device_id"`
	MessageID      string          `json:"message_id"`
	Timestamp      string          `json:"timestamp"`
	IdempotencyKey string          `json:"idempotency_key"`
	Status         int             `json:"status"`
	Body           json.RawMessage `json:"body"`
}

// backendStats is the body of GET /stats.
type backendStats struct {
	Requests       int            `json:"requests"`
	OK             int            `json:"ok"`
	Failed         int            `json:"failed"`
	UniqueMessages int            `json:"unique_messages"`
	Duplicates     int            `json:"duplicates"`
	Unauthorized   int            `json:"unauthorized"`
	ByDevice       map[string]int `json:"by_device"`
	MessageOK      *int           `json:"message_ok,omitempty"`
}

func (b *backend) routes() http.Handler {
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
func (b *backend) ingest(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	arrived := b.now()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBackendBody))
	r.Body.Close()
	if err != nil {
		http.Error(w, "cannot read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !b.authorized(w, r, body) {
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
	rec := backendRecord{
		Time:         arrived.UTC().Format(time.RFC3339Nano),
		PathDeviceID: pathDev,
		DeviceID:     r.Header.Get("X-Device-ID"),
		// The signed Idempotency-Key is the message id (PROTOCOL.md 4b:
		// X-Message-ID is not signed; VerifyRequest refuses a different
		// one, but not a missing one).
		MessageID:      cmp.Or(r.Header.Get("Idempotency-Key"), r.Header.Get("X-Message-ID")),
		Timestamp:      r.Header.Get("X-Device-Timestamp"),
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
func (b *backend) control(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBackendBody))
		r.Body.Close()
		if err != nil {
			http.Error(w, "cannot read body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if !b.authorized(w, r, body) {
			return
		}
		h(w, r)
	}
}

// authorized checks the bearer token and the signature required, if any.
// When one fails it answers 401, counts it and logs one line naming the
// reason (never the credentials), and returns false.
func (b *backend) authorized(w http.ResponseWriter, r *http.Request, body []byte) bool {
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
func (b *backend) record(rec *backendRecord, arrived time.Time) error {
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
func (b *backend) ingestBatch(w http.ResponseWriter, r *http.Request) {
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
		rec := backendRecord{Time: arrived.UTC().Format(time.RFC3339Nano), DeviceID: it.DeviceID, MessageID: it.MessageID,
			Timestamp: it.Timestamp.String(), IdempotencyKey: it.MessageID, Body: it.Payload}
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
func (b *backend) stats(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	s := backendStats{Requests: b.requests, OK: b.ok, Failed: b.failed, UniqueMessages: len(b.seen),
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
func (b *backend) fail(w http.ResponseWriter, r *http.Request) {
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
