package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestBoundsCoverEveryNumericKey: every numeric key has exactly one
// Bound, in print-defaults order, and its default lies inside it.
func TestBoundsCoverEveryNumericKey(t *testing.T) {
	var keys []string
	walkKeys(reflect.ValueOf(Defaults()), nil, func(path []string, v reflect.Value, section bool) {
		if _, ok := numeric(v); ok && !section {
			keys = append(keys, strings.Join(path, "."))
		}
	})
	var got []string
	for _, b := range Bounds {
		got = append(got, b.Key)
		if b.Min > b.Max {
			t.Errorf("%s: min %v > max %v", b.Key, b.Min, b.Max)
		}
	}
	if !reflect.DeepEqual(got, keys) {
		t.Fatalf("Bounds keys:\n%v\nnumeric keys:\n%v", got, keys)
	}
	if err := checkBounds(Defaults()); err != nil {
		t.Fatalf("a default is out of its bounds: %v", err)
	}
}

// TestBoundsEnforced: for every numeric key, Load (which serve and config
// check call) accepts both ends of its range and refuses one step past
// each, with one line naming the key, the range and the value; the
// values are set through the environment, as an operator could.
func TestBoundsEnforced(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "iotgw.yaml")
	base := "mqtt:\n  broker: ssl://127.0.0.1:8884\n  ca_file: /x/ca.crt\n  cert_file: /x/g.crt\n  key_file: /x/g.key\nbackend:\n  url: http://127.0.0.1:1/ingest\n"
	if err := os.WriteFile(cfg, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	walkKeys(reflect.ValueOf(Defaults()), nil, func(path []string, v reflect.Value, section bool) {
		if !section {
			kinds[strings.Join(path, ".")] = isDuration(v)
		}
	})
	for _, b := range Bounds {
		d := kinds[b.Key]
		step := 1.0
		if d {
			step = float64(time.Millisecond)
		}
		if b.Key == "limits.device_rate" {
			step = 0.5
		}
		for _, tc := range []struct {
			name string
			val  float64
			ok   bool
		}{
			{"below", b.Min - step, false},
			{"above", b.Max + step, false},
			{"min", b.Min, true},
			{"max", b.Max, true},
		} {
			t.Run(b.Key+"/"+tc.name, func(t *testing.T) {
				f := Defaults()
				setNumeric(t, &f, b.Key, tc.val)
				err := checkBounds(f)
				if tc.ok && err != nil {
					t.Fatalf("%s = %s refused: %v", b.Key, show(tc.val, d), err)
				}
				if !tc.ok {
					if err == nil || !strings.HasPrefix(err.Error(), b.Key+": must be ") || strings.Contains(err.Error(), "\n") {
						t.Fatalf("%s = %s: %v, want one line naming the key and range", b.Key, show(tc.val, d), err)
					}
					// And through Load, from the environment.
					env := EnvName(b.Key)
					t.Setenv(env, envValue(tc.val, d))
					if _, err := Load(cfg); err == nil || !strings.Contains(err.Error(), b.Key+": must be ") {
						t.Fatalf("Load with %s=%s: %v, want refused", env, envValue(tc.val, d), err)
					}
				}
			})
		}
	}
}

// TestQueueDepthTwoBillion is the case the sweep started from: four
// queues of 2e9 pointers were accepted.
func TestQueueDepthTwoBillion(t *testing.T) {
	f := Defaults()
	f.Pipeline.QueueDepth = 2_000_000_000
	if err := checkBounds(f); err == nil || !strings.Contains(err.Error(), "pipeline.queue_depth: must be 1..1048576, got 2000000000") {
		t.Fatalf("queue_depth 2e9: %v", err)
	}
}

func envValue(v float64, d bool) string {
	if d {
		return time.Duration(v).String()
	}
	return show(v, false)
}

// setNumeric sets the numeric leaf key of f to v.
func setNumeric(t *testing.T, f *File, key string, v float64) {
	t.Helper()
	found := false
	walkKeys(reflect.ValueOf(f).Elem(), nil, func(path []string, fv reflect.Value, section bool) {
		if section || strings.Join(path, ".") != key {
			return
		}
		found = true
		switch fv.Kind() {
		case reflect.Float32, reflect.Float64:
			fv.SetFloat(v)
		default:
			fv.SetInt(int64(v))
		}
	})
	if !found {
		t.Fatalf("no key %s", key)
	}
}

// TestBoundsDocumented: docs/CONFIG.md holds the table of Bounds as
// BoundsMarkdown prints it.
func TestBoundsDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "CONFIG.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), BoundsMarkdown()) {
		t.Fatalf("docs/CONFIG.md does not hold config.BoundsMarkdown():\n%s", BoundsMarkdown())
	}
}
