package validate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// ErrUnknownDevice is returned by a KeyStore for a device it does not hold.
var ErrUnknownDevice = errors.New("unknown device")

// ErrReplayFull is returned by a ReplayStore that cannot remember one more
// id without forgetting one still inside the window. The store fails
// closed (no live id is evicted) and the validator turns it into a
// QuotaExceeded rejection: counted, logged, answered and acked, so one
// message is never retried for ever while the store stays full (the
// device may resend it later with the same message id).
var ErrReplayFull = errors.New("replay store full")

// ErrQuotaExceeded is returned by a ReplayStore when the device already
// holds its quota of remembered ids (replay.max_entries_per_device). The
// validator turns it into a QuotaExceeded rejection of that device only.
var ErrQuotaExceeded = errors.New("device quota exceeded")

// Device is what the validator needs to know of a registered device.
type Device struct {
	// Secret is the UTF-8 bytes of the device's shared secret.
	Secret []byte
	// Enabled is false for a disabled device.
	Enabled bool
}

// KeyStore looks up devices. Device returns ErrUnknownDevice for an
// unregistered id; any other error is an infrastructure fault. It is called
// once per message, so it must answer from memory.
type KeyStore interface {
	Device(ctx context.Context, id string) (Device, error)
}

// ReplayStore remembers accepted message ids.
type ReplayStore interface {
	// Record atomically checks whether (deviceID, id) is remembered and, if
	// not, remembers it until expires. It reports dup=true for an id already
	// remembered. now is the instant the caller judged the message fresh
	// at: the store must use it, never read a clock of its own, for expiry
	// and pruning, so that an id is remembered for exactly as long as a
	// copy would pass the freshness check. It returns ErrReplayFull rather
	// than forget a live id, and ErrQuotaExceeded when the device is over
	// its own quota.
	Record(ctx context.Context, deviceID string, id [16]byte, expires, now time.Time) (dup bool, err error)
	// Forget removes an id recorded by Record, for a message whose
	// acceptance could not be made durable and will be redelivered.
	Forget(ctx context.Context, deviceID string, id [16]byte) error
}

// Config holds the validation settings.
type Config struct {
	// MaxClockSkew is the largest allowed |now - timestamp|, past or future. Default 5m.
	MaxClockSkew time.Duration `mapstructure:"max_clock_skew"`
	// MaxMessageBytes is the largest message accepted. Default 65536.
	MaxMessageBytes int `mapstructure:"max_message_bytes"`
	// MaxDepth is the deepest JSON nesting, the envelope counting as 1. Default 32.
	MaxDepth int `mapstructure:"max_depth"`
	// RejectNotices sends a signed notice to the device after a rejection. Default true.
	RejectNotices bool `mapstructure:"reject_notices"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{MaxClockSkew: 5 * time.Minute, MaxMessageBytes: envelope.DefaultMaxBytes, MaxDepth: envelope.DefaultMaxDepth, RejectNotices: true}
}

// Validate checks the settings.
func (c Config) Validate() error {
	switch {
	case c.MaxClockSkew <= 0:
		return fmt.Errorf("validation.max_clock_skew: must be positive, got %s", c.MaxClockSkew)
	case c.MaxClockSkew > 24*time.Hour:
		return fmt.Errorf("validation.max_clock_skew: %s is longer than 24h", c.MaxClockSkew)
	case c.MaxMessageBytes < 256 || c.MaxMessageBytes > 16<<20:
		return fmt.Errorf("validation.max_message_bytes: must be 256..16777216, got %d", c.MaxMessageBytes)
	case c.MaxDepth < 2 || c.MaxDepth > 1000:
		return fmt.Errorf("validation.max_depth: must be 2..1000, got %d", c.MaxDepth)
	}
	return nil
}

// Result is the outcome of Check for a message that could be judged.
type Result struct {
	// Envelope is the parsed message; zero when the message was malformed.
	Envelope envelope.Envelope
	// Rejection is nil when the message was accepted.
	Rejection *Rejection
	// Expires is when the accepted id may be forgotten: timestamp + skew.
	Expires time.Time
}

// Accepted reports whether the message passed every check.
func (r Result) Accepted() bool { return r.Rejection == nil }

// Validator runs the checks. It is safe for concurrent use.
type Validator struct {
	cfg    Config
	keys   KeyStore
	replay ReplayStore
	now    func() time.Time
	macs   sync.Map // device id → *macPool
	dummy  *macPool
}

// New returns a Validator. now is the clock (time.Now in production).
func New(cfg Config, keys KeyStore, replay ReplayStore, now func() time.Time) (*Validator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if keys == nil || replay == nil || now == nil {
		return nil, errors.New("validate: keys, replay and now are required")
	}
	return &Validator{cfg: cfg, keys: keys, replay: replay, now: now, dummy: newMACPool([]byte("iotgw-dummy-key-for-unknown-devices"))}, nil
}

// Check runs the checks on one message received on the topic of
// topicDevice, in the documented order, and records an accepted message's
// id in the replay store. A rejection is a Result; an error is an
// infrastructure fault, and then nothing has been recorded.
func (v *Validator) Check(ctx context.Context, topicDevice string, raw []byte) (Result, error) {
	env, err := envelope.Parse(raw, envelope.Limits{MaxBytes: v.cfg.MaxMessageBytes, MaxDepth: v.cfg.MaxDepth})
	if err != nil {
		return reject(env, Malformed, err.Error()), nil
	}
	if env.DeviceID != topicDevice {
		return reject(env, IdentityMismatch, "topic device differs from device_id"), nil
	}
	dev, err := v.keys.Device(ctx, env.DeviceID)
	if errors.Is(err, ErrUnknownDevice) {
		v.dummy.verify(&env)        // same cost as a known device
		v.macs.Delete(env.DeviceID) // a removed device's key leaves memory
		return reject(env, UnknownDevice, ""), nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("look up device: %w", err)
	}
	if !dev.Enabled {
		v.macs.Delete(env.DeviceID)
		return reject(env, Disabled, ""), nil
	}
	// Whole seconds on both sides: the timestamp has no fraction, so a
	// message exactly max_clock_skew old is inside the window all second long.
	// The clock is read once per Check; the replay store gets this instant.
	now := v.now().Truncate(time.Second)
	msgTime := time.Unix(env.Timestamp, 0)
	if d := now.Sub(msgTime); d > v.cfg.MaxClockSkew || d < -v.cfg.MaxClockSkew {
		return reject(env, Stale, fmt.Sprintf("timestamp is %s from now", d.Truncate(time.Second))), nil
	}
	if !v.macFor(env.DeviceID, dev.Secret).verify(&env) {
		return reject(env, BadSignature, ""), nil
	}
	expires := msgTime.Add(v.cfg.MaxClockSkew)
	dup, err := v.replay.Record(ctx, env.DeviceID, env.UUID(), expires, now)
	switch {
	case errors.Is(err, ErrQuotaExceeded):
		return reject(env, QuotaExceeded, "replay ids of this device at replay.max_entries_per_device"), nil
	case errors.Is(err, ErrReplayFull):
		return reject(env, QuotaExceeded, "replay store full (replay.max_entries)"), nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("record message id: %w", err)
	}
	if dup {
		return reject(env, Replay, ""), nil
	}
	return Result{Envelope: env, Expires: expires}, nil
}

// Sign signs e in place with deviceID's secret, for replies.
func (v *Validator) Sign(ctx context.Context, e *envelope.Envelope) error {
	dev, err := v.keys.Device(ctx, e.DeviceID)
	if err != nil {
		return fmt.Errorf("look up device: %w", err)
	}
	p := v.macFor(e.DeviceID, dev.Secret)
	m := p.get()
	e.Signature = envelope.SignWith(m, e)
	p.put(m)
	return nil
}

func reject(env envelope.Envelope, r Reason, detail string) Result {
	return Result{Envelope: env, Rejection: &Rejection{Reason: r, Detail: detail}}
}

// macPool reuses keyed HMAC states for one secret (hmac Reset keeps the key).
type macPool struct {
	secret []byte
	pool   sync.Pool
}

func newMACPool(secret []byte) *macPool {
	p := &macPool{secret: append([]byte(nil), secret...)}
	p.pool.New = func() any { return envelope.NewMAC(p.secret) }
	return p
}

func (p *macPool) get() hash.Hash  { return p.pool.Get().(hash.Hash) }
func (p *macPool) put(h hash.Hash) { p.pool.Put(h) }

func (p *macPool) verify(e *envelope.Envelope) bool {
	m := p.get()
	ok := envelope.Verify(m, e)
	p.put(m)
	return ok
}

// macFor returns the pool for id, rebuilding it when the secret changed.
func (v *Validator) macFor(id string, secret []byte) *macPool {
	if p, ok := v.macs.Load(id); ok && bytes.Equal(p.(*macPool).secret, secret) {
		return p.(*macPool)
	}
	p := newMACPool(secret)
	v.macs.Store(id, p)
	return p
}
