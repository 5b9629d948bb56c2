package config

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Bound is the accepted range of one numeric key, both ends included.
// Durations are given as time.Duration values, counts and sizes as
// numbers. A package's own Validate may refuse more (a relation between
// two keys, a value that is 0 only while a feature is off); it never
// accepts more.
type Bound struct {
	// Key is the dotted key, e.g. pipeline.queue_depth.
	Key string
	// Min and Max are the smallest and largest accepted values.
	Min, Max float64
	// Note says what 0 or the ends mean, for the documentation.
	Note string
}

// Bounds lists every numeric key of the configuration with its range, in
// the order of iotgw config print-defaults. Load refuses a value outside
// it (so do serve and config check) with one line naming the key, the
// range and the value; docs/CONFIG.md prints this table, and
// TestBoundsCoverEveryNumericKey keeps it complete.
var Bounds = []Bound{
	{"mqtt.keepalive", sec(1), dur(time.Hour), ""},
	{"mqtt.connect_timeout", dur(100 * time.Millisecond), dur(5 * time.Minute), ""},
	{"mqtt.max_reconnect_interval", dur(100 * time.Millisecond), dur(10 * time.Minute), ""},
	{"mqtt.max_disconnected", 0, dur(24 * time.Hour), "0 = never exit; else at least mqtt.max_reconnect_interval"},
	{"storage.lease", sec(2), dur(10 * time.Minute), "postgres; at least 2 × backend.timeout"},
	{"registry.refresh", dur(10 * time.Millisecond), dur(time.Minute), ""},
	{"validation.max_clock_skew", sec(1), dur(24 * time.Hour), ""},
	{"validation.max_message_bytes", 256, 16 << 20, ""},
	{"validation.max_depth", 2, 1000, ""},
	{"replay.max_entries", 1000, 100_000_000, "ids held in memory (about 100 bytes each)"},
	{"replay.max_entries_per_device", 0, 100_000_000, "0 = off; at most replay.max_entries"},
	{"outbox.max_pending", 1, 10_000_000, ""},
	{"outbox.max_pending_per_device", 0, 10_000_000, "0 = off; at most outbox.max_pending"},
	{"outbox.batch_max", 1, 10_000, ""},
	{"outbox.commit_linger", 0, dur(100 * time.Millisecond), "0 = commit at once; the longest a message waits for company at steady rates"},
	{"outbox.prune_interval", sec(1), dur(time.Hour), ""},
	{"backend.timeout", dur(100 * time.Millisecond), dur(10 * time.Minute), ""},
	{"backend.workers", 1, 4096, ""},
	{"backend.max_attempts", 1, 1_000_000, ""},
	{"backend.max_age", sec(1), dur(90 * 24 * time.Hour), ""},
	{"backend.backoff_initial", dur(time.Millisecond), dur(time.Hour), "at most backend.backoff_max"},
	{"backend.backoff_max", dur(time.Millisecond), dur(24 * time.Hour), ""},
	{"backend.breaker_threshold", 1, 1_000_000, ""},
	{"backend.breaker_cooldown", dur(10 * time.Millisecond), dur(24 * time.Hour), ""},
	{"backend.max_response_bytes", 0, 1 << 20, ""},
	{"backend.batch_max", 1, 1000, "1 = one message per POST"},
	{"backend.batch_linger", 0, sec(1), ""},
	{"backend.max_payload_memory", 0, 1 << 36, "bytes; 0 = every payload read back from the outbox"},
	{"http.ready_max_pending_age", 0, dur(24 * time.Hour), "0 = off"},
	{"pipeline.workers", 1, 256, ""},
	{"pipeline.queue_depth", 1, 1 << 20, "per worker"},
	{"limits.device_rate", 0, 1_000_000, "messages/s; 0 = off"},
	{"limits.device_burst", 0, 1_000_000, "at least 1 while limits.device_rate is on"},
	{"limits.notice_interval", 0, dur(time.Hour), "0 = a notice for every rejection and an answer to every time request"},
	{"limits.quarantine_after", 0, 10_000, "0 = off"},
	{"limits.quarantine_window", 0, dur(24 * time.Hour), "positive while limits.quarantine_after is on"},
	{"shutdown_grace", dur(100 * time.Millisecond), dur(time.Hour), ""},
}

func sec(n float64) float64           { return n * float64(time.Second) }
func dur(d time.Duration) float64     { return float64(d) }
func isDuration(v reflect.Value) bool { return v.Type() == reflect.TypeOf(time.Duration(0)) }

// numeric returns the value of a numeric config leaf, and whether it is one.
func numeric(v reflect.Value) (float64, bool) {
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(v.Int()), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return float64(v.Uint()), true
	case reflect.Float32, reflect.Float64:
		return v.Float(), true
	}
	return 0, false
}

// show prints a value of the key's kind: a duration or a number.
func show(f float64, d bool) string {
	if d {
		return time.Duration(f).String()
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// checkBounds refuses the first numeric key outside its Bound (or with
// no Bound: a key added without one).
func checkBounds(f File) error {
	bounds := make(map[string]Bound, len(Bounds))
	for _, b := range Bounds {
		bounds[b.Key] = b
	}
	var err error
	walkKeys(reflect.ValueOf(f), nil, func(path []string, v reflect.Value, section bool) {
		n, ok := numeric(v)
		if section || !ok || err != nil {
			return
		}
		key := strings.Join(path, ".")
		b, known := bounds[key]
		switch {
		case !known:
			err = fmt.Errorf("%s: no range is defined for this key (config.Bounds)", key)
		case math.IsNaN(n) || n < b.Min || n > b.Max:
			d := isDuration(v)
			err = fmt.Errorf("%s: must be %s..%s, got %s", key, show(b.Min, d), show(b.Max, d), show(n, d))
		}
	})
	return err
}

// BoundsMarkdown returns Bounds as a markdown table (docs/CONFIG.md).
func BoundsMarkdown() string {
	kinds := map[string]bool{}
	walkKeys(reflect.ValueOf(Defaults()), nil, func(path []string, v reflect.Value, section bool) {
		if !section {
			kinds[strings.Join(path, ".")] = isDuration(v)
		}
	})
	var b strings.Builder
	b.WriteString("| key | min | max | note |\n|---|---|---|---|\n")
	for _, x := range Bounds {
		d := kinds[x.Key]
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", x.Key, show(x.Min, d), show(x.Max, d), x.Note)
	}
	return b.String()
}
