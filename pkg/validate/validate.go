package validate

import (
	"bytes"
	"context"
	"crypto/subtle"
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
	// Keys are the device's keys, oldest first. Check tries every key
	// that has not expired, always all of them (constant time overall).
	// When Keys is empty, Secret is the only key (ID 0); a device with
	// neither verifies nothing. Secret is then the newest key's secret.
	Keys []Key
	// Counter reports that the device proves freshness with a counter
	// (docs/PROTOCOL.md, section 2a) instead of a timestamp. Check then
	// accepts only counter-mode messages from it, and only timestamp-mode
	// messages from any other device. The counter's bound is not the
	// validator's: the outbox commit enforces it (a counter at or below
	// the highest accepted is a replay), durably and fleet-wide.
	Counter bool
	// KeyUnavailable reports that the KeyStore could not open one of the
	// device's keys. Check rejects an enabled device so marked with
	// KeyUnavailable, whatever Secret and Keys hold.
	KeyUnavailable bool
}

// Key is one of a device's secrets.
type Key struct {
	// ID identifies the key within its device; newer keys have larger ids.
	ID int64
	// Secret is the UTF-8 bytes of the shared secret.
	Secret []byte
	// Expires is when the key stops verifying; zero means never.
	Expires time.Time
}

// KeyList returns d's keys, Secret standing in for an empty Keys.
func (d *Device) KeyList() []Key {
	if len(d.Keys) == 0 && len(d.Secret) > 0 {
		return []Key{{Secret: d.Secret}}
	}
	return d.Keys
}

// KeyStore looks up devices. Device returns ErrUnknownDevice for an
// unregistered id; any other error is an infrastructure fault. It is called
// once per message, so it must answer from memory.
type KeyStore interface {
	Device(ctx context.Context, id string) (Device, error)
}

// Rereader is a KeyStore that can re-read a device from the registry
// behind it. When a signature does not verify, Check calls Reread once
// before rejecting, so a key committed a moment ago (iotgw device rotate,
// then the device's first message under the new key) is not refused as
// bad_signature while the store's next refresh is still pending. Reread
// must bound its own cost (a flood of forgeries must not become a flood
// of database reads) and report changed=false when it did not re-read or
// nothing changed; an error is treated as no change.
type Rereader interface {
	Reread(ctx context.Context, id string) (dev Device, changed bool, err error)
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

// RateLimiter decides whether a registered, enabled device may send one
// more message at now. Check calls it once per such message, after the
// registry lookup and before the freshness and HMAC checks, so a refused
// message costs no HMAC, no replay id and no disk write. It must not block.
type RateLimiter interface {
	Allow(deviceID string, now time.Time) bool
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
	// KeyID is the id of the key the signature verified with (also set on
	// a replay rejection); 0 when none did or for a single-Secret device.
	KeyID int64
	// NewestKeyID is the largest key id the device has (valid or expired)
	// at this check, set with KeyID.
	NewestKeyID int64
	// Verified reports whether a key verified the signature.
	Verified bool
}

// Accepted reports whether the message passed every check.
func (r Result) Accepted() bool { return r.Rejection == nil }

// Validator runs the checks. It is safe for concurrent use.
type Validator struct {
	cfg    Config
	keys   KeyStore
	replay ReplayStore
	now    func() time.Time
	vmacs  sync.Map // device id → *deviceMACs, for verifying
	dummy  *macPool

	limit RateLimiter // nil: no rate limit
}

// LimitWith makes Check consult l for every message of a registered,
// enabled device (see RateLimiter). Call it before the first Check.
func (v *Validator) LimitWith(l RateLimiter) { v.limit = l }

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
		v.dummy.verify(&env) // same cost as a known device
		v.vmacs.Delete(env.DeviceID)
		return reject(env, UnknownDevice, ""), nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("look up device: %w", err)
	}
	if !dev.Enabled {
		v.vmacs.Delete(env.DeviceID)
		return reject(env, Disabled, ""), nil
	}
	if dev.KeyUnavailable {
		v.dummy.verify(&env) // same cost as a known device
		v.vmacs.Delete(env.DeviceID)
		return reject(env, KeyUnavailable, "the registry holds a key of this device the gateway cannot open"), nil
	}
	// The clock is read once per Check: the rate limiter, the freshness
	// check, key expiry and the replay store all see this instant.
	clock := v.now()
	if v.limit != nil && !v.limit.Allow(env.DeviceID, clock) {
		return reject(env, RateLimited, ""), nil
	}
	// Whole seconds on both sides: the timestamp has no fraction, so a
	// message exactly max_clock_skew old is inside the window all second long.
	now := clock.Truncate(time.Second)
	switch {
	case dev.Counter && !env.IsCounter():
		return reject(env, Malformed, "device uses counter freshness: the message must carry a counter, not a timestamp"), nil
	case !dev.Counter && env.IsCounter():
		return reject(env, Malformed, "device uses timestamp freshness: the message must carry a timestamp, not a counter"), nil
	case dev.Counter:
		return v.checkCounter(ctx, env, dev, now)
	}
	msgTime := time.Unix(env.Timestamp, 0)
	if d := now.Sub(msgTime); d > v.cfg.MaxClockSkew || d < -v.cfg.MaxClockSkew {
		if d < 0 {
			return reject(env, Stale, fmt.Sprintf("timestamp is %s in the future", -d)), nil
		}
		return reject(env, Stale, fmt.Sprintf("timestamp is %s old", d)), nil
	}
	keyID, dev, rej := v.verify(ctx, &env, dev, now)
	if rej != nil {
		return *rej, nil
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
	var newest int64
	for _, k := range dev.KeyList() {
		newest = max(newest, k.ID)
	}
	if dup {
		r := reject(env, Replay, "")
		r.KeyID, r.NewestKeyID, r.Verified = keyID, newest, true
		return r, nil
	}
	return Result{Envelope: env, Expires: expires, KeyID: keyID, NewestKeyID: newest, Verified: true}, nil
}

// checkCounter finishes the checks of a counter-mode message of a
// counter-mode device: the signature only. There is no clock to check and
// no message id to remember: the counter's bound, enforced in the outbox
// commit, makes every earlier message a replay for ever.
func (v *Validator) checkCounter(ctx context.Context, env envelope.Envelope, dev Device, now time.Time) (Result, error) {
	keyID, dev, rej := v.verify(ctx, &env, dev, now)
	if rej != nil {
		return *rej, nil
	}
	var newest int64
	for _, k := range dev.KeyList() {
		newest = max(newest, k.ID)
	}
	return Result{Envelope: env, KeyID: keyID, NewestKeyID: newest, Verified: true}, nil
}

// verify checks env's signature under every key of dev, re-reading the
// device once (see Rereader) before it rejects. It returns the key that
// verified and the device as last read, or the rejection.
func (v *Validator) verify(ctx context.Context, env *envelope.Envelope, dev Device, now time.Time) (int64, Device, *Result) {
	keyID, ok := v.macsFor(env.DeviceID, &dev).verify(env, now)
	if ok {
		return keyID, dev, nil
	}
	fresh, changed := v.reread(ctx, env.DeviceID)
	var r Result
	switch {
	case !changed:
		r = reject(*env, BadSignature, "")
	case !fresh.Enabled:
		r = reject(*env, Disabled, "")
	case fresh.KeyUnavailable:
		r = reject(*env, KeyUnavailable, "the registry holds a key of this device the gateway cannot open")
	case fresh.Counter != env.IsCounter():
		r = reject(*env, Malformed, "the device's freshness mode changed: re-sign the message in its new mode")
	default:
		if keyID, ok = v.macsFor(env.DeviceID, &fresh).verify(env, now); ok {
			return keyID, fresh, nil
		}
		r = reject(*env, BadSignature, "")
	}
	return 0, dev, &r
}

// reread re-reads a device after a signature did not verify, when the
// KeyStore can (see Rereader), and reports whether anything changed.
func (v *Validator) reread(ctx context.Context, id string) (Device, bool) {
	r, ok := v.keys.(Rereader)
	if !ok {
		return Device{}, false
	}
	dev, changed, err := r.Reread(ctx, id)
	if err != nil || !changed {
		return Device{}, false
	}
	return dev, true
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

// deviceMACs holds a pool per key of one device, for verifying.
type deviceMACs struct {
	keys  []keyMAC
	dummy *macPool
}

type keyMAC struct {
	id      int64
	expires time.Time
	pool    *macPool
}

// verify computes the HMAC of e under every key of the device, valid or
// expired, with no early exit, and reports the newest valid key that
// matched. Its cost depends only on the number of keys; a device with
// none still pays one HMAC against the dummy key.
func (d *deviceMACs) verify(e *envelope.Envelope, now time.Time) (int64, bool) {
	if len(d.keys) == 0 {
		d.dummy.verify(e)
		return 0, false
	}
	found, id := 0, int64(0)
	for _, k := range d.keys {
		ok := subtle.ConstantTimeByteEq(b2b(k.pool.verify(e)), 1)
		valid := subtle.ConstantTimeByteEq(b2b(k.expires.IsZero() || now.Before(k.expires)), 1)
		hit := ok & valid
		found |= hit
		id = int64(subtle.ConstantTimeSelect(hit, int(k.id), int(id)))
	}
	return id, found == 1
}

func b2b(b bool) uint8 {
	var u uint8
	if b {
		u = 1
	}
	return u
}

// macsFor returns the verifying pools for id, rebuilding them when the
// device's keys changed.
func (v *Validator) macsFor(id string, dev *Device) *deviceMACs {
	keys := dev.KeyList()
	if p, ok := v.vmacs.Load(id); ok && sameKeys(p.(*deviceMACs).keys, keys) {
		return p.(*deviceMACs)
	}
	d := &deviceMACs{keys: make([]keyMAC, len(keys)), dummy: v.dummy}
	for i, k := range keys {
		d.keys[i] = keyMAC{id: k.ID, expires: k.Expires, pool: newMACPool(k.Secret)}
	}
	v.vmacs.Store(id, d)
	return d
}

func sameKeys(have []keyMAC, want []Key) bool {
	if len(have) != len(want) {
		return false
	}
	for i := range have {
		if have[i].id != want[i].ID || !have[i].expires.Equal(want[i].Expires) || !bytes.Equal(have[i].pool.secret, want[i].Secret) {
			return false
		}
	}
	return true
}
