package forward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
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
	// MaxResponseBytes caps how much of a response body is read and relayed. Default 16 KiB.
	MaxResponseBytes int64 `mapstructure:"max_response_bytes"`
}

// DefaultConfig returns the defaults (URL empty).
func DefaultConfig() Config {
	return Config{Timeout: 10 * time.Second, Workers: 64, MaxAttempts: 50, MaxAge: 24 * time.Hour,
		BackoffInitial: 200 * time.Millisecond, BackoffMax: 30 * time.Second,
		BreakerThreshold: 5, BreakerCooldown: 5 * time.Second, MaxResponseBytes: 16 << 10}
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
	case c.MaxResponseBytes < 0:
		return errors.New("backend.max_response_bytes: must not be negative")
	}
	return nil
}

// Job is one stored message to deliver.
type Job struct {
	// Seq is the outbox row id.
	Seq int64
	// DeviceID, MessageID and Timestamp (raw digits) go into headers.
	DeviceID, MessageID, Timestamp string
	// Payload is POSTed verbatim.
	Payload []byte
	// ReceivedAt is when the gateway accepted the message (for MaxAge).
	ReceivedAt time.Time
	// Attempts counts failed tries so far.
	Attempts int
}

// Response is the backend's answer to a POST.
type Response struct {
	Status int
	Body   []byte
}

// RetryableError marks a failure worth retrying: a transport error, a
// timeout, a 5xx or a 429.
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

// Client POSTs jobs to the backend over one keep-alive transport.
type Client struct {
	cfg  Config
	http *http.Client
}

// NewClient returns a Client whose transport keeps enough idle connections
// for every worker.
func NewClient(cfg Config) *Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = cfg.Workers * 2
	tr.MaxIdleConnsPerHost = cfg.Workers * 2
	tr.MaxConnsPerHost = 0
	tr.IdleConnTimeout = 90 * time.Second
	tr.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return &Client{cfg: cfg, http: &http.Client{Transport: tr, Timeout: cfg.Timeout}}
}

// Post makes one attempt. It returns the response for a 2xx or a final
// 4xx, and a *RetryableError otherwise. The body is always read and closed.
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
	h["X-Device-Timestamp"] = []string{j.Timestamp}
	h["Idempotency-Key"] = []string{j.MessageID}
	resp, err := c.http.Do(req)
	if err != nil {
		return Response{}, &RetryableError{Err: err}
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxResponseBytes))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) //nolint:errcheck // drain for keep-alive
	resp.Body.Close()
	if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout {
		return Response{Status: resp.StatusCode}, &RetryableError{Status: resp.StatusCode}
	}
	if rerr != nil {
		return Response{}, &RetryableError{Err: fmt.Errorf("read response: %w", rerr)}
	}
	return Response{Status: resp.StatusCode, Body: body}, nil
}
