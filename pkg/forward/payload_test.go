package forward_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
)

// TestDispatcherPayloadMemory: with a Load hook, waiting Jobs keep at most
// MaxPayloadMemory bytes of payloads; the rest are read back when posted,
// so every POST still carries its exact payload, per-device order holds,
// and nothing is held once all settled (issue 9, finding 5). A failed read
// is retried; a payload that is gone dead-letters its Job.
func TestDispatcherPayloadMemory(t *testing.T) {
	for _, batch := range []int{1, 4} {
		t.Run(fmt.Sprint("batch_max=", batch), func(t *testing.T) {
			const devices, per, size = 3, 20, 1000
			disk := map[int64][]byte{} // the outbox
			var mu sync.Mutex
			var loads, failOnce int
			gone := int64(devices*per + 1)
			release := make(chan struct{})
			var posted []string
			cfg := testConfig(func(c *forward.Config) {
				c.MaxPayloadMemory = 5 * size
				c.BatchMax = batch
				c.BatchURL = "http://backend.invalid/batch"
			})
			post := func(j *forward.Job) forward.Response {
				<-release
				mu.Lock()
				defer mu.Unlock()
				if !bytes.Equal(j.Payload, disk[j.Seq]) {
					t.Errorf("job %d posted %d bytes, want its %d stored bytes", j.Seq, len(j.Payload), len(disk[j.Seq]))
				}
				posted = append(posted, j.DeviceID+"/"+j.MessageID)
				return forward.Response{Status: 200}
			}
			var poster forward.Poster = posterFunc(func(_ context.Context, j *forward.Job) (forward.Response, error) { return post(j), nil })
			if batch > 1 {
				poster = batchPoster{func(_ context.Context, jobs []*forward.Job) ([]forward.Response, error) {
					out := make([]forward.Response, len(jobs))
					for i, j := range jobs {
						out[i] = post(j)
					}
					return out, nil
				}}
			}
			settled := make(chan forward.Outcome, devices*per+1)
			d := forward.NewDispatcher(cfg, poster, neverOpens(time.Now), microBackoff, time.Now, forward.Hooks{
				Settled: func(_ *forward.Job, o forward.Outcome) { settled <- o },
				Load: func(_ context.Context, j *forward.Job) ([]byte, error) {
					mu.Lock()
					defer mu.Unlock()
					loads++
					if j.Seq == 7 && failOnce == 0 {
						failOnce++
						return nil, errors.New("disk busy")
					}
					if j.Seq == gone {
						return nil, fmt.Errorf("row %d: %w", j.Seq, forward.ErrPayloadGone)
					}
					return bytes.Clone(disk[j.Seq]), nil
				},
			})
			seq := int64(0)
			for i := range per {
				for dev := range devices {
					seq++
					p := bytes.Repeat([]byte{byte('a' + dev)}, size)
					mu.Lock()
					disk[seq] = p
					mu.Unlock()
					d.Submit(&forward.Job{Seq: seq, DeviceID: fmt.Sprint("d", dev), MessageID: fmt.Sprintf("%03d", i), Payload: bytes.Clone(p), ReceivedAt: time.Now()})
				}
			}
			d.Submit(&forward.Job{Seq: gone, DeviceID: "gone", MessageID: "x", Payload: make([]byte, size), ReceivedAt: time.Now()})
			if got := d.PayloadBytes(); got > cfg.MaxPayloadMemory || got == 0 {
				t.Fatalf("PayloadBytes = %d with %d jobs of %d bytes waiting, want 1..%d", got, devices*per+1, size, cfg.MaxPayloadMemory)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { d.Run(ctx); close(done) }()
			close(release)
			var dead int
			for range devices*per + 1 {
				select {
				case o := <-settled:
					if o.Dead {
						dead++
						if !errors.Is(o.Err, forward.ErrPayloadGone) {
							t.Errorf("dead with %v, want ErrPayloadGone", o.Err)
						}
					}
				case <-time.After(deadline):
					t.Fatal("jobs did not settle")
				}
			}
			cancel()
			<-done
			if dead != 1 || d.PayloadBytes() != 0 || d.Pending() != 0 {
				t.Fatalf("dead %d, PayloadBytes %d, Pending %d; want 1, 0, 0", dead, d.PayloadBytes(), d.Pending())
			}
			if loads < devices*per-5 {
				t.Errorf("only %d payloads read back; the budget holds 5", loads)
			}
			last := map[string]string{}
			for _, p := range posted {
				dev, mid, _ := bytes.Cut([]byte(p), []byte("/"))
				if prev, ok := last[string(dev)]; ok && string(mid) <= prev {
					t.Fatalf("device %s: %s posted after %s", dev, mid, prev)
				}
				last[string(dev)] = string(mid)
			}
		})
	}
}

// batchPoster is a BatchPoster from a function (Post is never used in batch mode).
type batchPoster struct {
	f func(ctx context.Context, jobs []*forward.Job) ([]forward.Response, error)
}

func (b batchPoster) Post(ctx context.Context, j *forward.Job) (forward.Response, error) {
	r, err := b.f(ctx, []*forward.Job{j})
	if err != nil {
		return forward.Response{}, err
	}
	return r[0], nil
}

func (b batchPoster) PostBatch(ctx context.Context, jobs []*forward.Job) ([]forward.Response, error) {
	return b.f(ctx, jobs)
}

// TestDispatcherLoadFailureDuringProbe: when the breaker's one probe is
// granted and the payload then cannot be read back, the probe is released,
// so the breaker does not stay half-open for ever and the Job settles.
func TestDispatcherLoadFailureDuringProbe(t *testing.T) {
	var mu sync.Mutex
	posts, loads := 0, 0
	settled := make(chan forward.Outcome, 1)
	cfg := testConfig(func(c *forward.Config) { c.Workers = 1; c.MaxPayloadMemory = 0 })
	d := forward.NewDispatcher(cfg, posterFunc(func(_ context.Context, j *forward.Job) (forward.Response, error) {
		mu.Lock()
		defer mu.Unlock()
		posts++
		if posts == 1 {
			return forward.Response{}, &forward.RetryableError{Status: 503} // opens the breaker
		}
		return forward.Response{Status: 200}, nil
	}), forward.NewBreaker(1, 10*time.Millisecond, time.Now), microBackoff, time.Now, forward.Hooks{
		Settled: func(_ *forward.Job, o forward.Outcome) { settled <- o },
		Load: func(context.Context, *forward.Job) ([]byte, error) {
			mu.Lock()
			defer mu.Unlock()
			loads++
			if loads == 2 { // the read for the probe
				return nil, errors.New("disk busy")
			}
			return []byte("{}"), nil
		},
	})
	d.Submit(&forward.Job{Seq: 1, DeviceID: "d", MessageID: "m", Payload: []byte("{}"), ReceivedAt: time.Now()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case o := <-settled:
		if o.Dead || o.Response.Status != 200 {
			t.Fatalf("settled %+v, want 200", o)
		}
	case <-time.After(deadline):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("job never settled (posts %d, loads %d): the breaker stayed half-open", posts, loads)
	}
}
