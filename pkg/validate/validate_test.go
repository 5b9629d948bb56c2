package validate_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

var (
	t0      = time.Unix(1727712000, 0)
	secretA = []byte(defSecret)
)

// message returns a wire message from sensor_001 signed with secret.
func message(secret []byte, ts int64, mid string, payload string) []byte {
	e := envelope.New(secret, "sensor_001", ts, mid, []byte(payload))
	return envelope.AppendJSON(nil, &e)
}

// uuidN returns a distinct canonical message id for n.
func uuidN(n uint64) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[8:], n)
	b[6] = 0x40
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func newValidator(t testing.TB, cfg validate.Config, keys validate.KeyStore, rs validate.ReplayStore, now time.Time) *validate.Validator {
	t.Helper()
	clock := func() time.Time { return now }
	if rs == nil {
		rs = replay.NewMemory(0, clock)
	}
	v, err := validate.New(cfg, keys, rs, clock)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func defaultKeys() fakeKeys {
	return fakeKeys{
		"sensor_001": {Secret: secretA, Enabled: true},
		"sensor_002": {Secret: []byte("another-secret-of-16+"), Enabled: true},
		"sensor_off": {Secret: secretA, Enabled: false},
		// sensor_lost still remembers secretA, but a key of it no longer opens.
		"sensor_lost":     {Secret: secretA, Enabled: true, KeyUnavailable: true},
		"sensor_lost_off": {Secret: secretA, Enabled: false, KeyUnavailable: true},
	}
}

func TestCheck(t *testing.T) {
	good := message(secretA, t0.Unix(), defMID, defPayload)
	offMsg := func() []byte {
		e := envelope.New(secretA, "sensor_off", t0.Unix(), defMID, []byte(defPayload))
		return envelope.AppendJSON(nil, &e)
	}()
	ghost := func() []byte {
		e := envelope.New(secretA, "ghost", t0.Unix(), defMID, []byte(defPayload))
		return envelope.AppendJSON(nil, &e)
	}()
	as := func(id string) []byte {
		e := envelope.New(secretA, id, t0.Unix(), defMID, []byte(defPayload))
		return envelope.AppendJSON(nil, &e)
	}
	tests := []struct {
		name    string
		topic   string
		before  []byte // checked first, verdict ignored
		msg     []byte
		want    validate.Reason // "" for accepted
		wantMID bool            // Result.Envelope.MessageID is set
	}{
		{"accepted", "sensor_001", nil, good, "", true},
		{"malformed", "sensor_001", nil, []byte(`{"device_id":"sensor_001"}`), validate.Malformed, false},
		{"malformed empty", "sensor_001", nil, nil, validate.Malformed, false},
		{"identity mismatch", "sensor_002", nil, good, validate.IdentityMismatch, true},
		{"identity mismatch to unknown topic", "ghost", nil, good, validate.IdentityMismatch, true},
		{"unknown device", "ghost", nil, ghost, validate.UnknownDevice, true},
		{"disabled", "sensor_off", nil, offMsg, validate.Disabled, true},
		{"key unavailable, signed with the remembered key", "sensor_lost", nil, as("sensor_lost"), validate.KeyUnavailable, true},
		{"disabled before key unavailable", "sensor_lost_off", nil, as("sensor_lost_off"), validate.Disabled, true},
		{"stale", "sensor_001", nil, message(secretA, t0.Unix()-3600, defMID, defPayload), validate.Stale, true},
		{"bad signature", "sensor_001", nil, message([]byte("wrong-secret-1234"), t0.Unix(), defMID, defPayload), validate.BadSignature, true},
		{"replay", "sensor_001", good, good, validate.Replay, true},
		{"replay with new content", "sensor_001", good, message(secretA, t0.Unix()+1, defMID, `{"x":1}`), validate.Replay, true},
		{"forgery does not burn the id", "sensor_001", message([]byte("wrong-secret-1234"), t0.Unix(), defMID, defPayload), good, "", true},
		{"stale does not burn the id", "sensor_001", message(secretA, t0.Unix()-3600, defMID, defPayload), good, "", true},
		{"same id on another device is not a replay", "sensor_001", offMsg, good, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := newValidator(t, validate.DefaultConfig(), defaultKeys(), nil, t0)
			ctx := context.Background()
			if tc.before != nil {
				if _, err := v.Check(ctx, "sensor_001", tc.before); err != nil {
					t.Fatal(err)
				}
			}
			res, err := v.Check(ctx, tc.topic, tc.msg)
			if err != nil {
				t.Fatalf("Check error: %v", err)
			}
			var got validate.Reason
			if !res.Accepted() {
				got = res.Rejection.Reason
				if !strings.HasPrefix(res.Rejection.String(), string(got)) {
					t.Errorf("Rejection.String() = %q", res.Rejection.String())
				}
			}
			if got != tc.want {
				t.Fatalf("verdict = %q (%v), want %q", got, res.Rejection, tc.want)
			}
			if (res.Envelope.MessageID != nil) != tc.wantMID {
				t.Errorf("Envelope.MessageID = %q", res.Envelope.MessageID)
			}
			if res.Accepted() && !res.Expires.Equal(time.Unix(res.Envelope.Timestamp, 0).Add(5*time.Minute)) {
				t.Errorf("Expires = %v", res.Expires)
			}
		})
	}
}

func TestCheckClockSkew(t *testing.T) {
	tests := []struct {
		name  string
		skew  time.Duration
		delta int64 // now - timestamp, in seconds
		want  validate.Reason
	}{
		{"on time", 5 * time.Minute, 0, ""},
		{"past at limit", 5 * time.Minute, 300, ""},
		{"past one second over", 5 * time.Minute, 301, validate.Stale},
		{"future at limit", 5 * time.Minute, -300, ""},
		{"future one second over", 5 * time.Minute, -301, validate.Stale},
		{"past far", 5 * time.Minute, 86400 * 365, validate.Stale},
		{"future far", 5 * time.Minute, -86400 * 365, validate.Stale},
		{"short skew at limit", 30 * time.Second, 30, ""},
		{"short skew over", 30 * time.Second, -31, validate.Stale},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := validate.DefaultConfig()
			cfg.MaxClockSkew = tc.skew
			v := newValidator(t, cfg, defaultKeys(), nil, t0)
			res, err := v.Check(context.Background(), "sensor_001", message(secretA, t0.Unix()-tc.delta, defMID, defPayload))
			if err != nil {
				t.Fatal(err)
			}
			var got validate.Reason
			if !res.Accepted() {
				got = res.Rejection.Reason
			}
			if got != tc.want {
				t.Fatalf("verdict = %q (%v), want %q", got, res.Rejection, tc.want)
			}
			if got == validate.Stale { // worded for a reader: no "-10m0s from now"
				want := fmt.Sprintf("timestamp is %s old", time.Duration(tc.delta)*time.Second)
				if tc.delta < 0 {
					want = fmt.Sprintf("timestamp is %s in the future", time.Duration(-tc.delta)*time.Second)
				}
				if res.Rejection.Detail != want {
					t.Fatalf("detail = %q, want %q", res.Rejection.Detail, want)
				}
			}
		})
	}
}

// errKeys fails every lookup with err.
type errKeys struct{ err error }

func (k errKeys) Device(context.Context, string) (validate.Device, error) {
	return validate.Device{}, k.err
}

// spyReplay records calls and answers with dup/err.
type spyReplay struct {
	mu      sync.Mutex
	dup     bool
	err     error
	records []string
}

func (s *spyReplay) Record(_ context.Context, dev string, id [16]byte, exp, _ time.Time) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = append(s.records, fmt.Sprintf("%s %x %d", dev, id, exp.Unix()))
	return s.dup, s.err
}

func (s *spyReplay) Forget(context.Context, string, [16]byte) error { return nil }

func TestCheckInfrastructureErrors(t *testing.T) {
	errDown := errors.New("registry down")
	good := message(secretA, t0.Unix(), defMID, defPayload)
	tests := []struct {
		name    string
		keys    validate.KeyStore
		replay  validate.ReplayStore
		wantErr error
	}{
		{"key store down", errKeys{errDown}, &spyReplay{}, errDown},
		{"key store wraps unknown device", errKeys{fmt.Errorf("lookup: %w", validate.ErrUnknownDevice)}, &spyReplay{}, nil},
		{"replay store down", defaultKeys(), &spyReplay{err: errDown}, errDown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := newValidator(t, validate.DefaultConfig(), tc.keys, tc.replay, t0)
			res, err := v.Check(context.Background(), "sensor_001", good)
			if tc.wantErr == nil {
				if err != nil || res.Accepted() || res.Rejection.Reason != validate.UnknownDevice {
					t.Fatalf("Check = %v, %v; want unknown_device", res.Rejection, err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Check error = %v, want %v", err, tc.wantErr)
			}
			if res.Rejection != nil {
				t.Fatalf("an infrastructure fault became a rejection: %v", res.Rejection)
			}
		})
	}
}

// TestCheckReplayFullWithMemory: a full replay store (fleet-wide) and a
// device at its own quota are verdicts, quota_exceeded, not infrastructure
// errors: the gateway acks and answers them instead of retrying the same
// message for ever (issue 9, finding 5).
func TestCheckReplayFullWithMemory(t *testing.T) {
	tests := []struct {
		name string
		cfg  replay.Config
		dev2 string // second message's device
	}{
		{"fleet-wide store full", replay.Config{MaxEntries: 1}, "sensor_001"},
		{"device at its quota", replay.Config{MaxEntries: 100, MaxEntriesPerDevice: 1}, "sensor_001"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := func() time.Time { return t0 }
			mem := replay.New(tc.cfg)
			v, err := validate.New(validate.DefaultConfig(), defaultKeys(), mem, clock)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if res, err := v.Check(ctx, "sensor_001", message(secretA, t0.Unix(), uuidN(1), defPayload)); err != nil || !res.Accepted() {
				t.Fatalf("first: %v %v", res.Rejection, err)
			}
			res, err := v.Check(ctx, "sensor_001", message(secretA, t0.Unix(), uuidN(2), defPayload))
			if err != nil || res.Accepted() || res.Rejection.Reason != validate.QuotaExceeded {
				t.Fatalf("second: %v %v, want a quota_exceeded rejection", res.Rejection, err)
			}
			// The first id is still remembered: a copy is a replay.
			res, err = v.Check(ctx, "sensor_001", message(secretA, t0.Unix(), uuidN(1), defPayload))
			if err != nil || res.Accepted() || res.Rejection.Reason != validate.Replay {
				t.Fatalf("copy of the first: %v %v, want replay", res.Rejection, err)
			}
			if mem.FullRejections()+mem.QuotaRejections() != 1 {
				t.Fatalf("FullRejections = %d, QuotaRejections = %d", mem.FullRejections(), mem.QuotaRejections())
			}
		})
	}
}

// TestCheckRecordsOnlyAfterSignature checks that the replay store is
// touched only for a message that passed every other check.
func TestCheckRecordsOnlyAfterSignature(t *testing.T) {
	tests := []struct {
		name    string
		topic   string
		msg     []byte
		records int
	}{
		{"malformed", "sensor_001", []byte(`{}`), 0},
		{"identity mismatch", "sensor_002", message(secretA, t0.Unix(), defMID, defPayload), 0},
		{"stale", "sensor_001", message(secretA, t0.Unix()-301, defMID, defPayload), 0},
		{"bad signature", "sensor_001", message([]byte("wrong-secret-1234"), t0.Unix(), defMID, defPayload), 0},
		{"good", "sensor_001", message(secretA, t0.Unix()-10, defMID, defPayload), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spy := &spyReplay{}
			v := newValidator(t, validate.DefaultConfig(), defaultKeys(), spy, t0)
			if _, err := v.Check(context.Background(), tc.topic, tc.msg); err != nil {
				t.Fatal(err)
			}
			if len(spy.records) != tc.records {
				t.Fatalf("Record calls = %v, want %d", spy.records, tc.records)
			}
			if tc.records == 1 {
				want := fmt.Sprintf("sensor_001 550e8400e29b41d4a716446655440000 %d", t0.Unix()-10+300)
				if spy.records[0] != want {
					t.Fatalf("Record(%s), want Record(%s)", spy.records[0], want)
				}
			}
		})
	}
}

func TestCheckReplayDupVerdict(t *testing.T) {
	v := newValidator(t, validate.DefaultConfig(), defaultKeys(), &spyReplay{dup: true}, t0)
	res, err := v.Check(context.Background(), "sensor_001", message(secretA, t0.Unix(), defMID, defPayload))
	if err != nil || res.Accepted() || res.Rejection.Reason != validate.Replay {
		t.Fatalf("Check = %v, %v; want replay", res.Rejection, err)
	}
}

// TestCheckConcurrentDuplicates delivers one message from many goroutines:
// exactly one is accepted.
func TestCheckConcurrentDuplicates(t *testing.T) {
	v := newValidator(t, validate.DefaultConfig(), defaultKeys(), nil, t0)
	msg := message(secretA, t0.Unix(), defMID, defPayload)
	var wg sync.WaitGroup
	var mu sync.Mutex
	verdicts := map[validate.Reason]int{}
	for range 64 {
		wg.Go(func() {
			res, err := v.Check(context.Background(), "sensor_001", msg)
			if err != nil {
				t.Error(err)
				return
			}
			r := validate.Reason("accepted")
			if !res.Accepted() {
				r = res.Rejection.Reason
			}
			mu.Lock()
			verdicts[r]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if verdicts["accepted"] != 1 || verdicts[validate.Replay] != 63 {
		t.Fatalf("verdicts = %v, want 1 accepted and 63 replay", verdicts)
	}
}

// TestCheckSecretRotation checks that a changed secret takes effect at once
// although the validator caches keyed HMAC states.
func TestCheckSecretRotation(t *testing.T) {
	keys := defaultKeys()
	v := newValidator(t, validate.DefaultConfig(), keys, nil, t0)
	ctx := context.Background()
	check := func(secret []byte, n uint64) validate.Reason {
		res, err := v.Check(ctx, "sensor_001", message(secret, t0.Unix(), uuidN(n), defPayload))
		if err != nil {
			t.Fatal(err)
		}
		if res.Accepted() {
			return "accepted"
		}
		return res.Rejection.Reason
	}
	newSecret := []byte("rotated-secret-0123456789")
	if got := check(secretA, 1); got != "accepted" {
		t.Fatalf("old secret before rotation: %s", got)
	}
	keys["sensor_001"] = validate.Device{Secret: newSecret, Enabled: true}
	if got := check(secretA, 2); got != validate.BadSignature {
		t.Fatalf("old secret after rotation: %s", got)
	}
	if got := check(newSecret, 3); got != "accepted" {
		t.Fatalf("new secret after rotation: %s", got)
	}
}

func TestConfigValidate(t *testing.T) {
	mod := func(f func(*validate.Config)) validate.Config {
		c := validate.DefaultConfig()
		f(&c)
		return c
	}
	tests := []struct {
		name    string
		cfg     validate.Config
		wantErr string
	}{
		{"defaults", validate.DefaultConfig(), ""},
		{"zero skew", mod(func(c *validate.Config) { c.MaxClockSkew = 0 }), "max_clock_skew"},
		{"negative skew", mod(func(c *validate.Config) { c.MaxClockSkew = -time.Second }), "max_clock_skew"},
		{"skew over a day", mod(func(c *validate.Config) { c.MaxClockSkew = 25 * time.Hour }), "max_clock_skew"},
		{"tiny messages", mod(func(c *validate.Config) { c.MaxMessageBytes = 255 }), "max_message_bytes"},
		{"smallest messages", mod(func(c *validate.Config) { c.MaxMessageBytes = 256 }), ""},
		{"huge messages", mod(func(c *validate.Config) { c.MaxMessageBytes = 16<<20 + 1 }), "max_message_bytes"},
		{"depth 1", mod(func(c *validate.Config) { c.MaxDepth = 1 }), "max_depth"},
		{"depth 2", mod(func(c *validate.Config) { c.MaxDepth = 2 }), ""},
		{"depth 1001", mod(func(c *validate.Config) { c.MaxDepth = 1001 }), "max_depth"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != (tc.wantErr == "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestNewRequiresDependencies(t *testing.T) {
	clock := time.Now
	rs := replay.NewMemory(0, clock)
	tests := []struct {
		name  string
		keys  validate.KeyStore
		rs    validate.ReplayStore
		clock func() time.Time
	}{
		{"no keys", nil, rs, clock},
		{"no replay", defaultKeys(), nil, clock},
		{"no clock", defaultKeys(), rs, nil},
	}
	for _, tc := range tests {
		if _, err := validate.New(validate.DefaultConfig(), tc.keys, tc.rs, tc.clock); err == nil {
			t.Errorf("%s: New succeeded", tc.name)
		}
	}
	if _, err := validate.New(validate.Config{}, defaultKeys(), rs, clock); err == nil {
		t.Error("New accepted a zero Config")
	}
}

// rereadKeys serves old until Reread, then fresh; it counts Reread calls.
type rereadKeys struct {
	old, fresh validate.Device
	changed    bool
	rereads    int
	reread     bool
}

func (k *rereadKeys) Device(context.Context, string) (validate.Device, error) {
	if k.reread {
		return k.fresh, nil
	}
	return k.old, nil
}

func (k *rereadKeys) Reread(context.Context, string) (validate.Device, bool, error) {
	k.rereads++
	if !k.changed {
		return validate.Device{}, false, nil
	}
	k.reread = true
	return k.fresh, true, nil
}

// TestCheckRereadsOnBadSignature: a message signed with a key the store
// has not loaded yet is judged again after one Reread, never more; with
// no change it stays bad_signature; a re-read that finds the device
// disabled or its key unavailable says so.
func TestCheckRereadsOnBadSignature(t *testing.T) {
	newKey := []byte("the-new-secret-0123456789")
	msg := message(newKey, t0.Unix(), defMID, defPayload)
	old := validate.Device{Enabled: true, Keys: []validate.Key{{ID: 1, Secret: secretA}}}
	rotated := validate.Device{Enabled: true, Keys: []validate.Key{{ID: 1, Secret: secretA}, {ID: 2, Secret: newKey}}}
	tests := []struct {
		name    string
		fresh   validate.Device
		changed bool
		want    validate.Reason
		keyID   int64
	}{
		{"new key loaded by the re-read", rotated, true, "", 2},
		{"nothing changed", rotated, false, validate.BadSignature, 0},
		{"changed, still no such key", old, true, validate.BadSignature, 0},
		{"disabled meanwhile", validate.Device{Keys: rotated.Keys}, true, validate.Disabled, 0},
		{"key unavailable meanwhile", validate.Device{Enabled: true, KeyUnavailable: true}, true, validate.KeyUnavailable, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys := &rereadKeys{old: old, fresh: tc.fresh, changed: tc.changed}
			v := newValidator(t, validate.DefaultConfig(), keys, nil, t0)
			res, err := v.Check(context.Background(), "sensor_001", msg)
			if err != nil {
				t.Fatal(err)
			}
			var got validate.Reason
			if !res.Accepted() {
				got = res.Rejection.Reason
			}
			if got != tc.want || res.KeyID != tc.keyID {
				t.Fatalf("verdict %q key %d, want %q key %d", got, res.KeyID, tc.want, tc.keyID)
			}
			if keys.rereads != 1 {
				t.Fatalf("%d re-reads, want 1", keys.rereads)
			}
		})
	}
	// A good signature costs no re-read.
	keys := &rereadKeys{old: rotated, fresh: rotated, changed: true}
	v := newValidator(t, validate.DefaultConfig(), keys, nil, t0)
	if res, err := v.Check(context.Background(), "sensor_001", msg); err != nil || !res.Accepted() || keys.rereads != 0 {
		t.Fatalf("good signature: %v %v, %d re-reads", res.Rejection, err, keys.rereads)
	}
}
