package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/iotgw/iotgw/pkg/backendsig"
)

// Config holds the backend settings.
type Config struct {
	// URL is the backend endpoint; "{device_id}" is replaced per message. Required.
	URL string `mapstructure:"url"`
	// Timeout bounds one POST, connection and body included. Default 10s.
	Timeout time.Duration `mapstructure:"timeout"`
	// Workers is how many POSTs may be in flight at once. Default 64.
	Workers int `mapstructure:"workers"`
	// MaxAttempts moves a message to the dead-letter table after this many failed tries. Default 50.
	MaxAttempts int `mapstructure:"max_attempts"`
	// MaxAge moves a message to the dead-letter table once it has waited this long. Default 24h.
	MaxAge time.Duration `mapstructure:"max_age"`
	// BackoffInitial is the first retry delay. Default 200ms.
	BackoffInitial time.Duration `mapstructure:"backoff_initial"`
	// BackoffMax caps the retry delay. Default 30s.
	BackoffMax time.Duration `mapstructure:"backoff_max"`
	// BreakerThreshold opens the circuit after this many consecutive failures. Default 5.
	BreakerThreshold int `mapstructure:"breaker_threshold"`
	// BreakerCooldown is how long the circuit stays open before one probe. Default 5s.
	BreakerCooldown time.Duration `mapstructure:"breaker_cooldown"`
	// MaxResponseBytes caps how much of a response body is read and relayed.
	// Default 16 KiB, at most MaxResponseBytesLimit. The signed reply carries
	// at most envelope.MaxReplyPayloadBytes of it; a longer body is cut and
	// marked "truncated":true (docs/PROTOCOL.md, section 4).
	MaxResponseBytes int64 `mapstructure:"max_response_bytes"`
	// BatchMax, above 1, turns on batch mode: up to this many messages (at
	// most one per device, so per-device order holds) go in one POST to
	// BatchURL as a JSON array; see docs/PROTOCOL.md. Default 1: one POST
	// per message.
	BatchMax int `mapstructure:"batch_max"`
	// BatchLinger is how long a batch waits for more messages before it is
	// sent when it is not full. Default 0: send what is ready at once.
	BatchLinger time.Duration `mapstructure:"batch_linger"`
	// BatchURL is the batch endpoint, required when BatchMax > 1.
	BatchURL string `mapstructure:"batch_url"`
	// MaxPayloadMemory bounds the bytes of payloads that messages waiting
	// for the backend keep in memory. Past it a message's payload stays in
	// the outbox only and is read back when the message is posted, so a
	// backlog (backend down, or one device flooding) costs disk, not RAM.
	// Payloads being posted are not counted (at most backend.workers ×
	// backend.batch_max of them). 0 keeps none in memory. Default 67108864 (64 MiB).
	MaxPayloadMemory int64 `mapstructure:"max_payload_memory"`

	// Backend trust (docs/PROTOCOL.md 4b). Secret files must be readable
	// by their owner only (chmod 600); their contents never appear in a
	// log line, an error or a metric.

	// BearerTokenFile, if set, names a file holding one line, the token,
	// sent as "Authorization: Bearer <token>" on every POST. One trailing
	// newline is dropped; an empty or multi-line file is refused. Default "".
	BearerTokenFile string `mapstructure:"bearer_token_file"`
	// CAFile, if set, is the only CA trusted for the backend's https
	// certificate (PEM); unset, the system's roots are. Default "".
	CAFile string `mapstructure:"ca_file"`
	// CertFile and KeyFile, set together, are the client certificate (PEM)
	// and its key presented to an https backend that asks for one (mutual
	// TLS). The key file must be chmod 600. Default "".
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
	// SigningKeyFile, if set, names a file holding one line of at least 32
	// bytes (openssl rand -hex 32), the HMAC-SHA256 key of the
	// X-Iotgw-Signature header on every POST. Use this key for nothing
	// else. Default "".
	SigningKeyFile string `mapstructure:"signing_key_file"`
	// SignatureScheme is the scheme of X-Iotgw-Signature: "v2" signs every
	// header the gateway sets from the message (X-Device-Id,
	// Idempotency-Key, X-Device-Timestamp, X-Iotgw-Seq); "v1" leaves
	// X-Device-Timestamp and X-Iotgw-Seq unsigned, for a backend that
	// verifies v1 until it is upgraded. Default "v2".
	SignatureScheme string `mapstructure:"signature_scheme"`
	// PrivateNetworkHost names the one host of URL and BatchURL that the
	// operator says is reached over a private network they control (the
	// compose stack's "backend", on a bridge network that never leaves the
	// machine), so plain http:// to it logs no warning at start. It
	// acknowledges nothing about any other host, and it makes nothing more
	// secure: a backend across a real network still needs https://.
	// Default "".
	PrivateNetworkHost string `mapstructure:"private_network_host"`
}

// MaxResponseBytesLimit is the largest backend.max_response_bytes: 1 MiB.
const MaxResponseBytesLimit = 1 << 20

// DefaultConfig returns the defaults (URL empty).
func DefaultConfig() Config {
	return Config{Timeout: 10 * time.Second, Workers: 64, MaxAttempts: 50, MaxAge: 24 * time.Hour,
		BackoffInitial: 200 * time.Millisecond, BackoffMax: 30 * time.Second,
		BreakerThreshold: 5, BreakerCooldown: 5 * time.Second, MaxResponseBytes: 16 << 10, BatchMax: 1, MaxPayloadMemory: 64 << 20,
		SignatureScheme: backendsig.SchemeV2}
}

// Validate checks the settings.
func (c Config) Validate() error {
	if c.URL == "" {
		return errors.New("backend.url: required")
	}
	u, err := url.Parse(strings.ReplaceAll(c.URL, "{device_id}", "x"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("backend.url: %q is not an http(s) URL", c.URL)
	}
	switch {
	case c.Timeout <= 0:
		return errors.New("backend.timeout: must be positive")
	case c.Workers < 1 || c.Workers > 4096:
		return fmt.Errorf("backend.workers: must be 1..4096, got %d", c.Workers)
	case c.MaxAttempts < 1:
		return errors.New("backend.max_attempts: must be at least 1")
	case c.MaxAge <= 0:
		return errors.New("backend.max_age: must be positive")
	case c.BackoffInitial <= 0 || c.BackoffMax < c.BackoffInitial:
		return errors.New("backend.backoff_initial/backoff_max: need 0 < initial ≤ max")
	case c.BreakerThreshold < 1 || c.BreakerCooldown <= 0:
		return errors.New("backend.breaker_threshold/breaker_cooldown: must be positive")
	case c.MaxPayloadMemory < 0:
		return errors.New("backend.max_payload_memory: must not be negative")
	case c.MaxResponseBytes < 0 || c.MaxResponseBytes > MaxResponseBytesLimit:
		return fmt.Errorf("backend.max_response_bytes: must be 0..%d, got %d", MaxResponseBytesLimit, c.MaxResponseBytes)
	case c.BatchMax < 1 || c.BatchMax > 1000:
		return fmt.Errorf("backend.batch_max: must be 1..1000, got %d", c.BatchMax)
	case c.BatchLinger < 0 || c.BatchLinger > time.Second:
		return fmt.Errorf("backend.batch_linger: must be 0..1s, got %s", c.BatchLinger)
	}
	if c.BatchMax > 1 {
		u, err := url.Parse(c.BatchURL)
		if c.BatchURL == "" {
			return errors.New("backend.batch_url: required when backend.batch_max > 1")
		}
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Contains(c.BatchURL, "{device_id}") {
			return fmt.Errorf("backend.batch_url: %q is not an http(s) URL without {device_id}", c.BatchURL)
		}
	}
	_, err = c.loadCredentials()
	return err
}

// Job is one stored message to deliver.
type Job struct {
	// Seq is the outbox row id.
	Seq int64
	// Order increases in commit order per device (outbox DSeq); sent as
	// X-Iotgw-Seq when positive, so a backend can see the order and gaps.
	Order int64
	// Epoch is the fencing token of the lease the row was claimed under
	// (0: not leased); Hooks.Admit checks it and may move it on.
	Epoch int64
	// DeviceID, MessageID and Timestamp (raw digits) go into headers.
	DeviceID, MessageID, Timestamp string
	// Counter is a counter-mode message's counter (raw digits), sent as
	// X-Device-Counter in place of X-Device-Timestamp; "" for a
	// timestamp-mode message, whose Timestamp is then set.
	Counter string
	// Payload is POSTed verbatim. The Dispatcher may drop it while the Job
	// waits (see Config.MaxPayloadMemory) and read it back with Hooks.Load.
	Payload []byte
	// ReceivedAt is when the gateway accepted the message (for MaxAge).
	ReceivedAt time.Time
	// Attempts counts failed tries so far.
	Attempts int
	// held is true while Payload counts against MaxPayloadMemory.
	held bool
}

// Response is the backend's answer to a POST.
type Response struct {
	Status int
	Body   []byte
}

// RetryableError marks a failure worth retrying: a transport error, a
// timeout, a 5xx, a 429, a 408 or a 401.
type RetryableError struct {
	Status int // 0 for transport errors
	Err    error
}

func (e *RetryableError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("backend answered %d", e.Status)
	}
	return "backend unreachable: " + e.Err.Error()
}

func (e *RetryableError) Unwrap() error { return e.Err }

// BatchRefusedError is a final answer (a 4xx) to a whole batch rather
// than per item. The Dispatcher posts the batch's items again one by one,
// so that the item the backend refuses does not take the others with it;
// for a batch of one, it is that item's answer.
type BatchRefusedError struct {
	Status int
	Body   []byte
}

func (e *BatchRefusedError) Error() string {
	return fmt.Sprintf("backend refused the whole batch with status %d", e.Status)
}

// RedirectError is a 3xx answer. The Client never follows a redirect: a
// 301/302/303 would turn the POST into a GET with no body, and a 307/308
// would re-send the payload, the device headers and the credentials to
// whatever host the Location names. It is final: the Dispatcher
// dead-letters the Job at once, with Error() as the reason.
type RedirectError struct {
	// Status is the 3xx status.
	Status int
	// Host is the host the Location header named, "" when none or relative.
	// Only the host is kept: a Location's path or query may carry tokens.
	Host string
}

func (e *RedirectError) Error() string {
	where := "no Location"
	if e.Host != "" {
		where = fmt.Sprintf("Location host %q", e.Host)
	}
	return fmt.Sprintf("backend answered %d, a redirect (%s); redirects are never followed: fix backend.url", e.Status, where)
}

// redirectError builds the RedirectError for resp.
func redirectError(resp *http.Response) *RedirectError {
	e := &RedirectError{Status: resp.StatusCode}
	if u, err := url.Parse(resp.Header.Get("Location")); err == nil {
		e.Host = u.Host
		if len(e.Host) > 100 {
			e.Host = e.Host[:100]
		}
	}
	return e
}

// isRedirect reports whether status is a 3xx.
func isRedirect(status int) bool { return status >= 300 && status < 400 }

// Client POSTs jobs to the backend over one keep-alive transport.
type Client struct {
	cfg  Config
	http *http.Client
	cred credentials
	now  func() time.Time // the signature timestamp
}

// NewClient returns a Client whose transport keeps enough idle connections
// for every worker. It reads the trust settings' files (token, keys,
// certificates) once, and fails, naming the key, as Validate does.
func NewClient(cfg Config) (*Client, error) {
	cred, err := cfg.loadCredentials()
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cred.tls
	tr.MaxIdleConns = cfg.Workers * 2
	tr.MaxIdleConnsPerHost = cfg.Workers * 2
	tr.MaxConnsPerHost = 0
	tr.IdleConnTimeout = 90 * time.Second
	tr.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return &Client{cfg: cfg, cred: cred, now: time.Now,
		http: &http.Client{Transport: tr, Timeout: cfg.Timeout, CheckRedirect: noRedirects}}, nil
}

// noRedirects makes the http.Client return a 3xx as it is: never follow.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// retryableStatus reports whether a backend status is worth retrying.
func retryableStatus(status int) bool {
	// A 401 refuses the gateway's credentials (token, signature, clock),
	// not the message: retried, so a fixed configuration still delivers it.
	return status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout ||
		status == http.StatusUnauthorized
}

// authenticate adds the bearer token and the signature to req, whose
// body is body and whose signed headers are set. For a batch they are
// all absent.
func (c *Client) authenticate(req *http.Request, body []byte) {
	if c.cred.authorization != "" {
		req.Header["Authorization"] = []string{c.cred.authorization}
	}
	if c.cred.signingKey != nil {
		first := func(name string) string {
			if v := req.Header[name]; len(v) > 0 {
				return v[0]
			}
			return ""
		}
		h := backendsig.Signed{DeviceID: first("X-Device-Id"), IdempotencyKey: first("Idempotency-Key"),
			DeviceTimestamp: first("X-Device-Timestamp"), DeviceCounter: first("X-Device-Counter"), Seq: first("X-Iotgw-Seq")}
		ts := c.now().Unix()
		req.Header[backendsig.TimestampHeader] = []string{strconv.FormatInt(ts, 10)}
		req.Header[backendsig.SignatureHeader] = []string{backendsig.Sign(c.cred.signingKey, c.cfg.SignatureScheme, req.Method, req.URL.RequestURI(), h, ts, body)}
	}
}

// Post makes one attempt. It returns the response for a 2xx or a final
// 4xx, a *RedirectError for a 3xx (never followed), and a *RetryableError
// otherwise. The body is always read and closed.
func (c *Client) Post(ctx context.Context, j *Job) (Response, error) {
	u := strings.ReplaceAll(c.cfg.URL, "{device_id}", url.PathEscape(j.DeviceID))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(j.Payload))
	if err != nil {
		return Response{}, fmt.Errorf("build request: %w", err)
	}
	h := req.Header
	h["Content-Type"] = []string{"application/json"}
	h["X-Device-Id"] = []string{j.DeviceID}
	h["X-Message-Id"] = []string{j.MessageID}
	if j.Counter != "" {
		h["X-Device-Counter"] = []string{j.Counter} // a counter-mode message: no device time
	} else {
		h["X-Device-Timestamp"] = []string{j.Timestamp}
	}
	h["Idempotency-Key"] = []string{j.MessageID}
	if j.Order > 0 {
		h["X-Iotgw-Seq"] = []string{strconv.FormatInt(j.Order, 10)}
	}
	c.authenticate(req, j.Payload)
	resp, err := c.http.Do(req)
	if err != nil {
		return Response{}, &RetryableError{Err: err}
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxResponseBytes))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) //nolint:errcheck // drain for keep-alive
	resp.Body.Close()
	if retryableStatus(resp.StatusCode) {
		return Response{Status: resp.StatusCode}, &RetryableError{Status: resp.StatusCode}
	}
	if isRedirect(resp.StatusCode) {
		return Response{Status: resp.StatusCode}, redirectError(resp)
	}
	if rerr != nil {
		return Response{}, &RetryableError{Err: fmt.Errorf("read response: %w", rerr)}
	}
	return Response{Status: resp.StatusCode, Body: body}, nil
}

// batchResult is one element of a batch response.
type batchResult struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body"`
}

// PostBatch makes one attempt for jobs in one POST to BatchURL: a JSON
// array of {"device_id","message_id","timestamp","payload"} with each
// payload's exact bytes. A 2xx answer must be a JSON array of
// {"status":N,"body":<any JSON>}, one per job in the same order; it
// returns those. A whole-request failure is a *RetryableError (transport,
// 5xx, 429, 408, or a 2xx whose body is not such an array); a 3xx is a
// *RedirectError (never followed); another 4xx is final for every job and
// is returned as each job's Response.
func (c *Client) PostBatch(ctx context.Context, jobs []*Job) ([]Response, error) {
	// Built by hand: json.Marshal would compact each payload, and the
	// backend must get the exact bytes the device signed. device_id,
	// message_id and timestamp were validated by the parser ([A-Za-z0-9_.-],
	// a UUID, digits), so they need no escaping.
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, j := range jobs {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(`{"device_id":"`)
		buf.WriteString(j.DeviceID)
		buf.WriteString(`","message_id":"`)
		buf.WriteString(j.MessageID)
		if j.Counter != "" {
			buf.WriteString(`","counter":`)
			buf.WriteString(j.Counter)
		} else {
			buf.WriteString(`","timestamp":`)
			buf.WriteString(j.Timestamp)
		}
		buf.WriteString(`,"payload":`)
		buf.Write(j.Payload)
		buf.WriteByte('}')
	}
	buf.WriteByte(']')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.BatchURL, bytes.NewReader(buf.Bytes()))
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header["Content-Type"] = []string{"application/json"}
	req.Header["X-Batch-Size"] = []string{strconv.Itoa(len(jobs))}
	c.authenticate(req, buf.Bytes())
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &RetryableError{Err: err}
	}
	// A batch answer carries up to MaxResponseBytes per job.
	limit := c.cfg.MaxResponseBytes*int64(len(jobs)) + 64*int64(len(jobs)) + 2
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) //nolint:errcheck // drain for keep-alive
	resp.Body.Close()
	if retryableStatus(resp.StatusCode) {
		return nil, &RetryableError{Status: resp.StatusCode}
	}
	if isRedirect(resp.StatusCode) {
		return nil, redirectError(resp)
	}
	if rerr != nil {
		return nil, &RetryableError{Err: fmt.Errorf("read batch response: %w", rerr)}
	}
	if resp.StatusCode >= 300 {
		return nil, &BatchRefusedError{Status: resp.StatusCode, Body: body}
	}
	out := make([]Response, len(jobs))
	var results []batchResult
	switch {
	case int64(len(body)) > limit:
		return nil, &RetryableError{Err: fmt.Errorf("batch response larger than %d bytes", limit)}
	case json.Unmarshal(body, &results) != nil:
		return nil, &RetryableError{Err: errors.New("batch response is not a JSON array of {status, body}")}
	case len(results) != len(jobs):
		return nil, &RetryableError{Err: fmt.Errorf("batch response has %d results for %d messages", len(results), len(jobs))}
	}
	for i, r := range results {
		if r.Status < 100 || r.Status > 599 {
			return nil, &RetryableError{Err: fmt.Errorf("batch response item %d: status %d", i, r.Status)}
		}
		b := []byte(r.Body)
		if int64(len(b)) > c.cfg.MaxResponseBytes {
			b = b[:c.cfg.MaxResponseBytes]
		}
		out[i] = Response{Status: r.Status, Body: b}
	}
	return out, nil
}
