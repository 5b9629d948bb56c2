package perf

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Recorder counts the messages of one load run as a consumer (the sink or
// the subscriber) sees them. The load generator names its devices
// <prefix>1..<prefix>N and numbers each device's messages 1..M in the
// payload {"seq":S,"sent_ns":T}; the recorder keeps one counter per
// (device, seq), so it can tell a duplicate from a missing message, and the
// latency arrival − sent_ns of every first arrival.
//
// Record may be called from many goroutines.
type Recorder struct {
	prefix   string
	devices  int
	messages int

	mu          sync.Mutex
	seen        []uint8 // (device-1)*messages + seq-1 → arrivals, saturating
	received    int64
	duplicates  int64
	unexpected  int64
	firstBad    string
	firstSent   int64
	lastArrival int64
	latencies   []int64 // nanoseconds, one per first arrival
}

// NewRecorder returns a recorder for devices × messages messages from the
// devices <prefix>1..<prefix>devices.
func NewRecorder(prefix string, devices, messages int) *Recorder {
	return &Recorder{
		prefix:    prefix,
		devices:   devices,
		messages:  messages,
		seen:      make([]uint8, devices*messages),
		latencies: make([]int64, 0, devices*messages),
	}
}

// Want returns the number of messages the run sends.
func (r *Recorder) Want() int64 { return int64(r.devices) * int64(r.messages) }

// Record counts one arrival at time at (Unix nanoseconds) of a message from
// device whose payload, or whole envelope, is body. A message that cannot
// be placed (unknown device, no seq or sent_ns, seq out of range) is
// counted as unexpected.
func (r *Recorder) Record(device string, body []byte, at int64) {
	dev, devOK := r.deviceIndex(device)
	seq, seqOK := jsonInt(body, `"seq":`)
	sent, sentOK := jsonInt(body, `"sent_ns":`)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.received++
	if !devOK || !seqOK || !sentOK || seq < 1 || seq > int64(r.messages) {
		r.unexpected++
		if r.firstBad == "" {
			r.firstBad = fmt.Sprintf("device %q body %.80q", device, body)
		}
		return
	}
	i := dev*r.messages + int(seq) - 1
	if r.seen[i] > 0 {
		r.duplicates++
		if r.seen[i] < 255 {
			r.seen[i]++
		}
		return
	}
	r.seen[i] = 1
	if r.firstSent == 0 || sent < r.firstSent {
		r.firstSent = sent
	}
	if at > r.lastArrival {
		r.lastArrival = at
	}
	r.latencies = append(r.latencies, at-sent)
}

// deviceIndex returns the 0-based index of <prefix><n>.
func (r *Recorder) deviceIndex(device string) (int, bool) {
	s, ok := strings.CutPrefix(device, r.prefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > r.devices {
		return 0, false
	}
	return n - 1, true
}

// jsonInt returns the non-negative integer that follows key in b. The load
// generator writes its payload without spaces, and the envelope embeds the
// payload byte for byte, so a search is enough and costs no allocation.
func jsonInt(b []byte, key string) (int64, bool) {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return 0, false
	}
	b = b[i+len(key):]
	var n int64
	digits := 0
	for ; digits < len(b) && digits < 19 && b[digits] >= '0' && b[digits] <= '9'; digits++ {
		n = n*10 + int64(b[digits]-'0')
	}
	return n, digits > 0
}

// Received returns the number of arrivals so far, of any kind.
func (r *Recorder) Received() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.received
}

// Unique returns the number of distinct messages recorded so far.
func (r *Recorder) Unique() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return int64(len(r.latencies))
}

// Wait waits until every message arrived, or until nothing new arrived for
// stall, or ctx ends. It reports whether every message arrived.
func (r *Recorder) Wait(ctx context.Context, stall time.Duration) bool {
	last, lastChange := int64(-1), time.Now()
	for {
		n := r.Unique()
		if n >= r.Want() {
			return true
		}
		if n != last {
			last, lastChange = n, time.Now()
		} else if time.Since(lastChange) > stall {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Counts is what a Recorder saw.
type Counts struct {
	// Want is the number of messages the run sent.
	Want int64 `json:"want"`
	// Received counts every arrival, duplicates and unexpected ones included.
	Received int64 `json:"received"`
	// Unique counts distinct (device, seq) pairs.
	Unique int64 `json:"unique"`
	// Duplicates counts arrivals of a pair already seen.
	Duplicates int64 `json:"duplicates"`
	// Missing is Want − Unique.
	Missing int64 `json:"missing"`
	// Unexpected counts arrivals that name no message of the run.
	Unexpected int64 `json:"unexpected"`
	// FirstUnexpected describes the first unexpected arrival.
	FirstUnexpected string `json:"first_unexpected,omitempty"`
}

// ExactlyOnce returns an error unless every message arrived exactly once
// and nothing else arrived.
func (c Counts) ExactlyOnce() error {
	if c.Unique == c.Want && c.Duplicates == 0 && c.Unexpected == 0 {
		return nil
	}
	return fmt.Errorf("want %d messages exactly once: got %d distinct, %d missing, %d duplicates, %d unexpected %s",
		c.Want, c.Unique, c.Missing, c.Duplicates, c.Unexpected, c.FirstUnexpected)
}

// Snapshot is a Recorder's counts, span and latency distribution.
type Snapshot struct {
	Counts
	// FirstSent is the earliest sent_ns, LastArrival the latest arrival
	// (Unix nanoseconds).
	FirstSent, LastArrival int64
	// Latency is the distribution of arrival − sent_ns.
	Latency Latency

	latencies []int64 // nanoseconds, sorted
}

// Span returns the time from the first send to the last arrival.
func (s Snapshot) Span() time.Duration { return time.Duration(s.LastArrival - s.FirstSent) }

// Snapshot returns the counts and latencies so far.
func (r *Recorder) Snapshot() Snapshot {
	r.mu.Lock()
	lat := slices.Clone(r.latencies)
	s := Snapshot{
		Counts: Counts{Want: r.Want(), Received: r.received, Unique: int64(len(r.latencies)), Duplicates: r.duplicates,
			Unexpected: r.unexpected, FirstUnexpected: r.firstBad},
		FirstSent:   r.firstSent,
		LastArrival: r.lastArrival,
	}
	r.mu.Unlock()
	s.Missing = s.Want - s.Unique
	s.Latency = NewLatency(lat)
	s.latencies = lat
	return s
}

// Latency is a latency distribution in milliseconds. Percentiles use the
// nearest-rank method.
type Latency struct {
	Samples int     `json:"samples"`
	P50     float64 `json:"p50_ms"`
	P90     float64 `json:"p90_ms"`
	P99     float64 `json:"p99_ms"`
	P999    float64 `json:"p999_ms"`
	Max     float64 `json:"max_ms"`
}

// NewLatency summarizes ns, nanoseconds; it sorts ns in place.
func NewLatency(ns []int64) Latency {
	if len(ns) == 0 {
		return Latency{}
	}
	slices.Sort(ns)
	at := func(p float64) float64 {
		k := int(math.Ceil(p*float64(len(ns)))) - 1 // nearest rank
		k = min(max(k, 0), len(ns)-1)
		return float64(ns[k]) / 1e6
	}
	return Latency{Samples: len(ns), P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: float64(ns[len(ns)-1]) / 1e6}
}
