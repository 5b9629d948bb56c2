package device

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/iotgw/iotgw/pkg/envelope"
)

// CounterStore persists a counter-mode device's counter across reboots
// (docs/PROTOCOL.md, section 2a): it holds the first counter of the block
// in use. Load returns it (ok false when nothing was stored yet); Save must
// make start durable before it returns.
type CounterStore interface {
	Load() (start int64, ok bool, err error)
	Save(start int64) error
}

// DefaultCounterEvery is how many counters a block holds: the store is
// written once per block.
const DefaultCounterEvery = 100

// Counter hands out a counter-mode device's counters: strictly increasing,
// never reused across reboots, with one write to its CounterStore per
// block of every counters. It is safe for concurrent use (but messages
// must reach the gateway in counter order: send them in order, on one
// connection).
type Counter struct {
	store CounterStore
	every int64

	mu       sync.Mutex
	next     int64 // the next counter to hand out
	blockEnd int64 // the last counter of the block saved; next > blockEnd needs a Save
	spent    bool  // envelope.MaxCounter was handed out
}

// NewCounter loads st and returns a Counter that continues after
// everything a previous run may have used: at the stored block's start +
// every, or at 1 when nothing was stored. every 0 means
// DefaultCounterEvery. Keep every the same across runs (or only raise
// it): a smaller one could hand out counters of the previous run's block.
func NewCounter(st CounterStore, every int64) (*Counter, error) {
	if st == nil {
		return nil, fmt.Errorf("%w: counter: no CounterStore", ErrConfig)
	}
	if every == 0 {
		every = DefaultCounterEvery
	}
	if every < 1 {
		return nil, fmt.Errorf("%w: counter: every must be positive", ErrConfig)
	}
	start, ok, err := st.Load()
	if err != nil {
		return nil, fmt.Errorf("counter: load: %w", err)
	}
	c := &Counter{store: st, every: every, next: 1}
	if ok {
		if start < 1 {
			return nil, fmt.Errorf("counter: stored block start %d is out of range", start)
		}
		if start > envelope.MaxCounter-every {
			return nil, ErrCounterExhausted
		}
		c.next = start + every
	}
	c.blockEnd = c.next - 1 // the first Next saves a new block
	return c, nil
}

// ErrCounterExhausted is returned by Next when the counter reached
// envelope.MaxCounter: the device needs "iotgw device reset-counter" and
// a new secret.
var ErrCounterExhausted = errors.New("counter: exhausted (iotgw device reset-counter gives the device a new start)")

// Next returns the next counter. At the first counter of a block it saves
// the block's start first, and fails (handing out nothing) if the save
// fails: a counter is never used before it is covered by what is stored.
func (c *Counter) Next() (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.spent {
		return 0, ErrCounterExhausted
	}
	if c.next > c.blockEnd {
		if err := c.store.Save(c.next); err != nil {
			return 0, fmt.Errorf("counter: save: %w", err)
		}
		c.blockEnd = envelope.MaxCounter
		if c.next <= envelope.MaxCounter-(c.every-1) {
			c.blockEnd = c.next + c.every - 1
		}
	}
	n := c.next
	if n == envelope.MaxCounter {
		c.spent = true
	} else {
		c.next++
	}
	return n, nil
}

// FileCounterStore is a CounterStore in a file holding the block start in
// decimal. Save writes a temporary file, syncs it and renames it over
// the old one, so a crash leaves the old value or the new one.
type FileCounterStore string

// Load implements CounterStore.
func (f FileCounterStore) Load() (int64, bool, error) {
	b, err := os.ReadFile(string(f))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("%s: not a counter: %w", f, err)
	}
	return n, true, nil
}

// Save implements CounterStore.
func (f FileCounterStore) Save(start int64) error {
	tmp, err := os.CreateTemp(filepath.Dir(string(f)), ".counter-*")
	if err != nil {
		return err
	}
	_, werr := tmp.WriteString(strconv.FormatInt(start, 10) + "\n")
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), string(f)); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if d, err := os.Open(filepath.Dir(string(f))); err == nil {
		d.Sync() //nolint:errcheck // best effort: the rename is what matters
		d.Close()
	}
	return nil
}

// SignCounter returns a new counter-mode message (docs/PROTOCOL.md,
// section 2a) with a fresh message id, the next counter of the device's
// Config.Counter, and payload, which must be one JSON value. It fails
// when the device has no Counter or the counter cannot be saved.
func (d *Device) SignCounter(payload []byte) (Message, error) {
	if d.counter == nil {
		return Message{}, ErrNoCounter
	}
	n, err := d.counter.Next()
	if err != nil {
		return Message{}, err
	}
	id := string(envelope.NewMessageID())
	e := envelope.Envelope{DeviceID: d.id, Counter: n, CounterRaw: strconv.AppendInt(nil, n, 10),
		MessageID: []byte(id), Payload: payload}
	d.signMu.Lock()
	e.Signature = envelope.SignWith(d.signMAC, &e)
	d.signMu.Unlock()
	return Message{ID: id, Raw: envelope.AppendJSON(make([]byte, 0, 192+len(payload)), &e)}, nil
}

// ErrNoCounter is SignCounter's error for a device without Config.Counter.
var ErrNoCounter = errors.New("device: no Config.Counter: the device signs timestamps")

// next signs payload in the device's mode: a counter when Config.Counter
// is set, else the device's time (Now).
func (d *Device) next(payload []byte) (Message, error) {
	if d.counter != nil {
		return d.SignCounter(payload)
	}
	return d.Sign(d.Now(), payload), nil
}
