// Package config loads iotgw's configuration: defaults, then a YAML file,
// then IOTGW_<SECTION>_<KEY> environment variables, into each package's own
// Config, and validates the result so a bad setting fails at start with one
// line naming its key.
package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/iotgw/iotgw/pkg/gateway"
)

// File is the whole configuration file.
type File struct {
	gateway.Config `mapstructure:",squash"`
	// Log configures logging.
	Log LogConfig `mapstructure:"log"`
}

// LogConfig configures the zap logger.
type LogConfig struct {
	// Level is debug, info, warn or error. Default info.
	Level string `mapstructure:"level"`
	// Format is json or console. Default json.
	Format string `mapstructure:"format"`
}

// Defaults returns the built-in configuration.
func Defaults() File {
	return File{Config: gateway.DefaultConfig(), Log: LogConfig{Level: "info", Format: "json"}}
}

// Load reads path (optional: "" means defaults and environment only) and the
// environment, and validates the result.
func Load(path string) (File, error) {
	f, err := load(path)
	if err != nil {
		return f, err
	}
	if err := f.Validate(); err != nil {
		return f, err
	}
	return f, nil
}

// LoadUnvalidated is Load without Validate, for tools that need only a
// section (the CLI reads registry.path).
func LoadUnvalidated(path string) (File, error) { return load(path) }

func load(path string) (File, error) {
	v := viper.New()
	def := Defaults()
	setDefaults(v, reflect.ValueOf(def))
	v.SetEnvPrefix("IOTGW")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	if err := checkEnv(v.AllKeys(), os.Environ()); err != nil {
		return def, err
	}
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return def, fmt.Errorf("config file %s: %w", path, errors.Unwrap(err))
		}
		v.SetConfigFile(path)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return def, fmt.Errorf("config file %s: %w", path, err)
		}
		if err := checkKeys(v.AllKeys()); err != nil {
			return def, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	var f File
	if err := v.UnmarshalExact(&f, viper.DecodeHook(decodeHook)); err != nil {
		return def, fmt.Errorf("config: %s", oneLine(err))
	}
	return f, nil
}

// Validate checks every section.
func (f File) Validate() error {
	if err := checkBounds(f); err != nil {
		return err
	}
	if err := f.Config.Validate(); err != nil {
		return err
	}
	if _, err := zapcore.ParseLevel(f.Log.Level); err != nil {
		return fmt.Errorf("log.level: %q is not debug, info, warn or error", f.Log.Level)
	}
	if f.Log.Format != "json" && f.Log.Format != "console" {
		return fmt.Errorf("log.format: %q is not json or console", f.Log.Format)
	}
	return nil
}

// Logger builds the zap logger described by c.
func (c LogConfig) Logger() (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	if c.Format == "console" {
		zc = zap.NewDevelopmentConfig()
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil // a rejection log line per message is the contract
	zc.DisableStacktrace = true
	zc.EncoderConfig.TimeKey = "ts"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.EncoderConfig.EncodeDuration = zapcore.StringDurationEncoder // "grace":"10s", not 10
	return zc.Build()
}

// setDefaults registers every leaf of val under its mapstructure key, so
// that environment variables bind to it (viper only binds known keys).
func setDefaults(v *viper.Viper, val reflect.Value) {
	walkKeys(val, nil, func(path []string, fv reflect.Value, section bool) {
		if section {
			return
		}
		key := strings.Join(path, ".")
		if d, ok := fv.Interface().(time.Duration); ok {
			v.SetDefault(key, d.String())
			return
		}
		v.SetDefault(key, fv.Interface())
	})
}

// decodeHook is viper's default (durations and lists from strings) with one
// change: a bare number is refused for a duration. YAML "timeout: 10" would
// otherwise be 10 ns, valid and silently wrong.
var decodeHook = mapstructure.ComposeDecodeHookFunc(
	func(from, to reflect.Type, data any) (any, error) {
		if to != reflect.TypeOf(time.Duration(0)) {
			return data, nil
		}
		switch from.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
			return nil, fmt.Errorf("a bare number (%v) is not a duration; write it with a unit, e.g. \"%vs\"", data, data)
		case reflect.String:
			// mapstructure's own hook drops the value from its error; a
			// duration is never a secret, so name it.
			d, err := time.ParseDuration(data.(string))
			if err != nil {
				return nil, fmt.Errorf("%q is not a duration; write a number with a unit, e.g. \"30s\" or \"5m\"", data)
			}
			return d, nil
		}
		return data, nil
	},
	mapstructure.StringToSliceHookFunc(","),
)

// oneLine flattens mapstructure's multi-line error into one line.
func oneLine(err error) string {
	msg := strings.TrimPrefix(err.Error(), "decoding failed due to the following error(s):")
	var parts []string
	for _, l := range strings.Split(msg, "\n") {
		if l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "*")); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.ReplaceAll(strings.Join(parts, "; "), "'' has invalid keys:", "unknown top-level keys:")
}

// EnvPrefix starts every environment variable that sets a key.
const EnvPrefix = "IOTGW_"

// EnvName returns the environment variable that sets key (e.g.
// backend.url → IOTGW_BACKEND_URL).
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// envTestPrefix starts the variables of iotgw's own test suite (e.g.
// IOTGW_TEST_PG, the PostgreSQL the tests create databases on): no config
// section is named test, so none of them is a misspelt setting.
const envTestPrefix = EnvPrefix + "TEST_"

// checkEnv refuses an IOTGW_ variable that sets no key: a misspelt one
// would otherwise be ignored without a word. It names the closest known
// variable. The test suite's variables (IOTGW_TEST_*) are not settings.
func checkEnv(keys, environ []string) error {
	known := make(map[string]bool, len(keys))
	for _, k := range keys {
		known[EnvName(k)] = true
	}
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) || known[name] || strings.HasPrefix(name, envTestPrefix) {
			continue
		}
		best, bestD := "", 4 // suggest only a near miss
		for k := range known {
			if d := distance(name, k); d < bestD || (d == bestD && k < best) {
				best, bestD = k, d
			}
		}
		if best != "" {
			return fmt.Errorf("%s: unknown setting; did you mean %s?", name, best)
		}
		return fmt.Errorf("%s: unknown setting (variables starting %s set config keys, e.g. IOTGW_BACKEND_URL; see iotgw config print-defaults)", name, EnvPrefix)
	}
	return nil
}

// knownKeys returns every key of the configuration (its leaves) and its
// sections, as dotted paths.
func knownKeys() (leaves, sections map[string]bool) {
	leaves, sections = map[string]bool{}, map[string]bool{}
	walkKeys(reflect.ValueOf(Defaults()), nil, func(path []string, _ reflect.Value, section bool) {
		if section {
			sections[strings.Join(path, ".")] = true
		} else {
			leaves[strings.Join(path, ".")] = true
		}
	})
	return leaves, sections
}

// checkKeys refuses keys that name no setting, each with the nearest
// known key when one is near (a typo), as checkEnv does for variables.
// Keys below a known key (a list or a section given the wrong shape) are
// left to the decoder, which names the type it wanted.
func checkKeys(keys []string) error {
	leaves, sections := knownKeys()
	var bad []string
	for _, k := range keys {
		if leaves[k] || sections[k] {
			continue
		}
		under := false
		for p := k; !under; {
			i := strings.LastIndexByte(p, '.')
			if i < 0 {
				break
			}
			p = p[:i]
			under = leaves[p]
		}
		if under {
			continue
		}
		msg := "unknown key " + k
		best, bestD := "", 4 // suggest only a near miss
		for l := range leaves {
			if d := distance(k, l); d < bestD || (d == bestD && l < best) {
				best, bestD = l, d
			}
		}
		if best != "" {
			msg += " (did you mean " + best + "?)"
		}
		bad = append(bad, msg)
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return fmt.Errorf("%s; iotgw config print-defaults lists every key", strings.Join(bad, "; "))
}

// distance is the Levenshtein edit distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
