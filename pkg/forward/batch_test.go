package forward

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func batchConfig(url string) Config {
	cfg := DefaultConfig()
	cfg.URL = "http://unused.invalid/{device_id}"
	cfg.BatchMax = 8
	cfg.BatchURL = url
	cfg.Workers = 1
	return cfg
}

func TestBatchConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"default is single", func(c *Config) { c.BatchMax = 1; c.BatchURL = "" }, ""},
		{"batch ok", func(*Config) {}, ""},
		{"no batch url", func(c *Config) { c.BatchURL = "" }, "backend.batch_url: required"},
		{"templated batch url", func(c *Config) { c.BatchURL = "http://h/{device_id}" }, "backend.batch_url"},
		{"not http", func(c *Config) { c.BatchURL = "ftp://h/batch" }, "backend.batch_url"},
		{"zero", func(c *Config) { c.BatchMax = 0 }, "backend.batch_max"},
		{"too big", func(c *Config) { c.BatchMax = 1001 }, "backend.batch_max"},
		{"negative linger", func(c *Config) { c.BatchLinger = -time.Millisecond }, "backend.batch_linger"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := batchConfig("http://127.0.0.1:1/batch")
			tc.edit(&cfg)
			err := cfg.Validate()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestPostBatch: the request carries each payload's exact bytes, and the
// per-item answers map back in order; malformed answers are retryable.
func TestPostBatch(t *testing.T) {
	jobs := []*Job{
		{DeviceID: "d1", MessageID: "m1", Timestamp: "1727712000", Payload: []byte(`{"t": 22.5 }`)},
		{DeviceID: "d2", MessageID: "m2", Timestamp: "1727712001", Payload: []byte(`"ü"`)},
	}
	for _, tc := range []struct {
		name      string
		status    int
		answer    string
		want      []Response
		retryable bool
	}{
		{"per-item answers", 200, `[{"status":200,"body":{"ok":1}},{"status":422,"body":"no"}]`,
			[]Response{{200, []byte(`{"ok":1}`)}, {422, []byte(`"no"`)}}, false},
		{"whole batch 503", 503, `busy`, nil, true},
		{"whole batch 400 is refused as a whole", 400, `bad`, nil, false},
		{"wrong length", 200, `[{"status":200,"body":1}]`, nil, true},
		{"not an array", 200, `{"ok":true}`, nil, true},
		{"bad item status", 200, `[{"status":0,"body":1},{"status":200,"body":1}]`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []byte
			var hdr http.Header
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got, _ = io.ReadAll(r.Body)
				hdr = r.Header
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.answer) // a failed write shows as the client's error
			}))
			defer srv.Close()
			c, err := NewClient(batchConfig(srv.URL + "/batch"))
			if err != nil {
				t.Fatal(err)
			}
			resps, err := c.PostBatch(context.Background(), jobs)
			wantBody := `[{"device_id":"d1","message_id":"m1","timestamp":1727712000,"payload":{"t": 22.5 }},` +
				`{"device_id":"d2","message_id":"m2","timestamp":1727712001,"payload":"ü"}]`
			if string(got) != wantBody {
				t.Errorf("request body\n got %s\nwant %s", got, wantBody)
			}
			if hdr.Get("X-Batch-Size") != "2" || hdr.Get("Content-Type") != "application/json" {
				t.Errorf("headers %v", hdr)
			}
			var re *RetryableError
			if tc.retryable != errors.As(err, &re) {
				t.Fatalf("err = %v, retryable want %v", err, tc.retryable)
			}
			if tc.retryable {
				return
			}
			var br *BatchRefusedError
			if tc.status >= 300 {
				if !errors.As(err, &br) || br.Status != tc.status || string(br.Body) != tc.answer {
					t.Fatalf("err = %v, want a BatchRefusedError with %d %q", err, tc.status, tc.answer)
				}
				return
			}
			if err != nil || len(resps) != len(tc.want) {
				t.Fatalf("resps %v, err %v", resps, err)
			}
			for i := range resps {
				if resps[i].Status != tc.want[i].Status || string(resps[i].Body) != string(tc.want[i].Body) {
					t.Errorf("item %d: %d %s, want %d %s", i, resps[i].Status, resps[i].Body, tc.want[i].Status, tc.want[i].Body)
				}
			}
		})
	}
}

// batchRecorder is a BatchPoster that records each batch and answers from
// a per-message script.
type batchRecorder struct {
	mu      sync.Mutex
	batches [][]string
	answer  func(j *Job) int
	release chan struct{} // if set, each PostBatch waits for a token
}

func (b *batchRecorder) Post(context.Context, *Job) (Response, error) {
	panic("single Post called in batch mode")
}

func (b *batchRecorder) PostBatch(_ context.Context, jobs []*Job) ([]Response, error) {
	if b.release != nil {
		<-b.release
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	out := make([]Response, len(jobs))
	for i, j := range jobs {
		ids = append(ids, j.MessageID)
		out[i] = Response{Status: b.answer(j)}
	}
	b.batches = append(b.batches, ids)
	return out, nil
}

// TestDispatcherBatches: one batch holds at most one message per device
// (per-device order), at most BatchMax messages, and a per-item retryable
// status retries that message alone.
func TestDispatcherBatches(t *testing.T) {
	var mu sync.Mutex
	failedOnce := map[string]bool{}
	rec := &batchRecorder{release: make(chan struct{}), answer: func(j *Job) int {
		mu.Lock()
		defer mu.Unlock()
		if j.MessageID == "d0-1" && !failedOnce[j.MessageID] {
			failedOnce[j.MessageID] = true
			return 503
		}
		return 200
	}}
	cfg := batchConfig("http://unused/batch")
	cfg.BatchMax = 4
	cfg.BackoffInitial, cfg.BackoffMax = time.Millisecond, time.Millisecond
	var settled []string
	done := make(chan struct{})
	const devices, perDevice = 6, 3
	d := NewDispatcher(cfg, rec, NewBreaker(100, time.Second, time.Now), ExponentialJitter(time.Millisecond, time.Millisecond), time.Now, Hooks{
		Settled: func(j *Job, o Outcome) {
			mu.Lock()
			defer mu.Unlock()
			if o.Dead || o.Response.Status != 200 {
				t.Errorf("%s settled %+v", j.MessageID, o)
			}
			settled = append(settled, j.MessageID)
			if len(settled) == devices*perDevice {
				close(done)
			}
		},
	})
	for k := range perDevice {
		for dev := range devices {
			id := "d" + strconv.Itoa(dev) + "-" + strconv.Itoa(k)
			d.Submit(&Job{DeviceID: "d" + strconv.Itoa(dev), MessageID: id, ReceivedAt: time.Now()})
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	go func() {
		for {
			select {
			case rec.release <- struct{}{}:
			case <-done:
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("settled %d of %d", len(settled), devices*perDevice)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	big := 0
	for _, b := range rec.batches {
		if len(b) > cfg.BatchMax {
			t.Errorf("batch of %d > BatchMax %d: %v", len(b), cfg.BatchMax, b)
		}
		big = max(big, len(b))
		devs := map[string]bool{}
		for _, id := range b {
			dev := id[:strings.IndexByte(id, '-')]
			if devs[dev] {
				t.Errorf("batch %v holds two messages of %s", b, dev)
			}
			devs[dev] = true
		}
	}
	if big < 2 {
		t.Errorf("no batch held more than one message: %v", rec.batches)
	}
	// Per device, settled in submission order, d0-1 included after its retry.
	mu.Lock()
	defer mu.Unlock()
	last := map[string]int{}
	for _, id := range settled {
		dev, k := id[:strings.IndexByte(id, '-')], id[strings.IndexByte(id, '-')+1:]
		n, _ := strconv.Atoi(k)
		if p, ok := last[dev]; ok && n != p+1 {
			t.Errorf("%s settled after %s-%d", id, dev, p)
		}
		last[dev] = n
	}
	if !failedOnce["d0-1"] {
		t.Error("the scripted 503 never happened")
	}
}

// TestDispatcherBatchRefusedWhole: a backend that refuses a whole batch
// (one 400 for the batch, not per item) because of one device's payload
// must not take the other devices' messages with it: the batch is posted
// again item by item, and only the refused item settles as refused.
// Before, every item of the batch settled with the 400 and was gone.
func TestDispatcherBatchRefusedWhole(t *testing.T) {
	var mu sync.Mutex
	var sizes []int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		n, _ := strconv.Atoi(r.Header.Get("X-Batch-Size"))
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
		if strings.Contains(string(body), `"poison"`) {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"strict parser"}`)
			return
		}
		items := make([]string, n)
		for i := range items {
			items[i] = `{"status":200,"body":{}}`
		}
		_, _ = io.WriteString(w, "["+strings.Join(items, ",")+"]")
	}))
	defer srv.Close()
	cfg := batchConfig(srv.URL + "/batch")
	cfg.BatchLinger = 50 * time.Millisecond // gather the whole backlog into one batch
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const devices = 5
	got := map[string]int{}
	done := make(chan struct{})
	d := NewDispatcher(cfg, c, NewBreaker(100, time.Second, time.Now), ExponentialJitter(time.Millisecond, time.Millisecond), time.Now, Hooks{
		Settled: func(j *Job, o Outcome) {
			mu.Lock()
			defer mu.Unlock()
			got[j.DeviceID] = o.Response.Status
			if o.Dead {
				got[j.DeviceID] = -1
			}
			if len(got) == devices {
				close(done)
			}
		},
	})
	for i := range devices {
		p := `{"t":1}`
		if i == 2 {
			p = `"poison"`
		}
		d.Submit(&Job{DeviceID: "d" + strconv.Itoa(i), MessageID: "m" + strconv.Itoa(i), Timestamp: "1", Payload: []byte(p), ReceivedAt: time.Now()})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("settled %v of %d devices", got, devices)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range devices {
		want := 200
		if i == 2 {
			want = 400
		}
		if s := got["d"+strconv.Itoa(i)]; s != want {
			t.Errorf("d%d settled with %d, want %d (batch sizes posted: %v)", i, s, want, sizes)
		}
	}
	if len(sizes) == 0 || sizes[0] < 2 {
		t.Errorf("the first POST carried %v items: the test needs a real batch", sizes)
	}
}
