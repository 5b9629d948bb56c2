// Package downlink signs what the gateway sends a device on
// device/<id>/response: replies and rejection notices. It sits at the end
// of the pipeline, after forwarding. A downlink is signed with the
// downlink key of the device's secret (envelope.DownlinkKey, so it never
// verifies as an uplink), and with the key the device was last seen to
// use: after a rotation, replies follow the device onto its new key only
// once it has used it.
package downlink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"sync"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/validate"
)

// Keys looks devices up (a validate.KeyStore: the registry's cache).
type Keys interface {
	Device(ctx context.Context, id string) (validate.Device, error)
}

// ErrKeyUnavailable is Sign's error for a device whose current key the
// gateway cannot open (validate.KeyUnavailable): nothing is signed.
var ErrKeyUnavailable = errors.New("its key cannot be opened (registry stale or sealed under another KEK): nothing signed")

// Signer signs downlinks. Its methods are safe for concurrent use.
type Signer struct {
	keys Keys
	now  func() time.Time
	// used is device id → the newest key id (int64) the device's messages
	// verified with; in memory only.
	used sync.Map
	// pools is device id → *pool: downlink keys, derived once per secret.
	pools sync.Map
}

// New returns a Signer looking keys up in keys; now is its clock (key
// expiry).
func New(keys Keys, now func() time.Time) *Signer {
	return &Signer{keys: keys, now: now}
}

// Used remembers that dev's message verified with key id, keeping the
// newest: an old-key message still in flight after a rotation does not
// move replies back to the old key. newest is the largest key id dev has
// now: a remembered id above it belongs to a registration since removed
// (ids start over at 1), and is replaced.
func (s *Signer) Used(dev string, id, newest int64) {
	for {
		old, loaded := s.used.LoadOrStore(dev, id)
		if !loaded || old.(int64) == id || (old.(int64) > id && old.(int64) <= newest) || s.used.CompareAndSwap(dev, old, id) {
			return
		}
	}
}

// KeyFor returns the key id downlinks to dev are signed with: the newest
// the device has used since start, else 0 (its newest valid key).
func (s *Signer) KeyFor(dev string) int64 {
	if v, ok := s.used.Load(dev); ok {
		return v.(int64)
	}
	return 0
}

// Forget drops what the Signer holds of dev (a device no longer
// registered): its downlink key leaves memory.
func (s *Signer) Forget(dev string) {
	s.pools.Delete(dev)
	s.used.Delete(dev)
}

// Sign signs e in place for e.DeviceID, with the key KeyFor names while
// it is valid, else the device's newest valid key. It fails wrapping
// validate.ErrUnknownDevice for a device not registered (there is no key
// to sign with).
func (s *Signer) Sign(ctx context.Context, e *envelope.Envelope) error {
	return s.SignWith(ctx, e, s.KeyFor(e.DeviceID))
}

// SignWith is Sign with key keyID (0: the newest valid key).
func (s *Signer) SignWith(ctx context.Context, e *envelope.Envelope, keyID int64) error {
	dev, err := s.keys.Device(ctx, e.DeviceID)
	if err != nil {
		if errors.Is(err, validate.ErrUnknownDevice) {
			s.pools.Delete(e.DeviceID)
		}
		return fmt.Errorf("look up device: %w", err)
	}
	if dev.KeyUnavailable { // its current key does not open: never sign under a remembered one
		s.pools.Delete(e.DeviceID)
		return fmt.Errorf("device %s: %w", e.DeviceID, ErrKeyUnavailable)
	}
	secret := keySecret(dev.KeyList(), keyID, s.now())
	if secret == nil {
		return fmt.Errorf("device %s: no valid key to sign with", e.DeviceID)
	}
	p := s.pool(e.DeviceID, secret)
	m := p.pool.Get().(hash.Hash)
	e.Signature = envelope.SignWith(m, e)
	p.pool.Put(m)
	return nil
}

// keySecret picks the secret downlinks are signed with: key keyID if it
// is still valid, else the newest valid key.
func keySecret(keys []validate.Key, keyID int64, now time.Time) []byte {
	var newest []byte
	for _, k := range keys {
		if !k.Expires.IsZero() && !now.Before(k.Expires) {
			continue
		}
		if keyID != 0 && k.ID == keyID {
			return k.Secret
		}
		newest = k.Secret
	}
	return newest
}

// pool reuses keyed HMAC states of one device's downlink key, remembering
// the secret it was derived from so that a changed secret rebuilds it.
type pool struct {
	secret []byte
	pool   sync.Pool
}

func (s *Signer) pool(id string, secret []byte) *pool {
	if p, ok := s.pools.Load(id); ok && bytes.Equal(p.(*pool).secret, secret) {
		return p.(*pool)
	}
	p := &pool{secret: append([]byte(nil), secret...)}
	key := envelope.DownlinkKey(secret)
	p.pool.New = func() any { return envelope.NewMAC(key) }
	s.pools.Store(id, p)
	return p
}
