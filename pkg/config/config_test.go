package config_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/pki"
)

// cleanEnv hides every IOTGW_* variable of the test process, so a
// developer's shell cannot change what a test loads.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "IOTGW_") {
			t.Setenv(k, "") // restores the value after the test
			os.Unsetenv(k)
		}
	}
}

// writeYAML writes body to a config file in a fresh directory.
func writeYAML(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "iotgw.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// setEnv sets every variable of env for the rest of the test.
func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func TestLoadLayers(t *testing.T) {
	tests := []struct {
		name string
		yaml string            // config file body; "" loads no file
		env  map[string]string // IOTGW_* variables
		want func(f *config.File)
	}{
		{
			name: "defaults only",
			want: func(*config.File) {},
		},
		{
			name: "empty file keeps every default",
			yaml: "# nothing\n",
			want: func(*config.File) {},
		},
		{
			name: "file overrides the keys it names and only those",
			yaml: `
mqtt:
  broker: ssl://broker.example:8883
  ca_file: /etc/iotgw/ca.crt
  keepalive: 45s
backend:
  url: http://backend.example/ingest/{device_id}
  timeout: 2500ms
  workers: 8
  max_response_bytes: 1024
validation:
  reject_notices: false
outbox:
  synchronous: normal
http:
  pprof: true
shutdown_grace: 1m
log:
  level: debug
  format: console
`,
			want: func(f *config.File) {
				f.MQTT.Broker = "ssl://broker.example:8883"
				f.MQTT.CAFile = "/etc/iotgw/ca.crt"
				f.MQTT.KeepAlive = 45 * time.Second
				f.Backend.URL = "http://backend.example/ingest/{device_id}"
				f.Backend.Timeout = 2500 * time.Millisecond
				f.Backend.Workers = 8
				f.Backend.MaxResponseBytes = 1024
				f.Validation.RejectNotices = false
				f.Outbox.Synchronous = "normal"
				f.HTTP.Pprof = true
				f.ShutdownGrace = time.Minute
				f.Log = config.LogConfig{Level: "debug", Format: "console"}
			},
		},
		{
			name: "environment overrides defaults",
			env: map[string]string{
				"IOTGW_BACKEND_URL":               "http://env.example/in",
				"IOTGW_MQTT_CA_FILE":              "/run/ca.pem",
				"IOTGW_BACKEND_MAX_ATTEMPTS":      "7",
				"IOTGW_BACKEND_BREAKER_COOLDOWN":  "250ms",
				"IOTGW_OUTBOX_PATH":               "/var/lib/iotgw/outbox.db",
				"IOTGW_VALIDATION_REJECT_NOTICES": "false",
				"IOTGW_HTTP_PPROF":                "true",
				"IOTGW_SHUTDOWN_GRACE":            "3s",
				"IOTGW_LOG_LEVEL":                 "warn",
				// Backend trust (issue 9).
				"IOTGW_BACKEND_BEARER_TOKEN_FILE": "/run/secrets/backend-token",
				"IOTGW_BACKEND_CA_FILE":           "/run/backend-ca.pem",
				"IOTGW_BACKEND_CERT_FILE":         "/run/gw.pem",
				"IOTGW_BACKEND_KEY_FILE":          "/run/secrets/gw.key",
				"IOTGW_BACKEND_SIGNING_KEY_FILE":  "/run/secrets/backend-signing.key",
			},
			want: func(f *config.File) {
				f.Backend.URL = "http://env.example/in"
				f.MQTT.CAFile = "/run/ca.pem"
				f.Backend.MaxAttempts = 7
				f.Backend.BreakerCooldown = 250 * time.Millisecond
				f.Outbox.Path = "/var/lib/iotgw/outbox.db"
				f.Validation.RejectNotices = false
				f.HTTP.Pprof = true
				f.ShutdownGrace = 3 * time.Second
				f.Log.Level = "warn"
				f.Backend.BearerTokenFile = "/run/secrets/backend-token"
				f.Backend.CAFile = "/run/backend-ca.pem"
				f.Backend.CertFile = "/run/gw.pem"
				f.Backend.KeyFile = "/run/secrets/gw.key"
				f.Backend.SigningKeyFile = "/run/secrets/backend-signing.key"
			},
		},
		{
			name: "environment beats the file",
			yaml: "backend:\n  url: http://file.example/\n  workers: 3\nmqtt:\n  ca_file: file-ca.crt\n",
			env:  map[string]string{"IOTGW_BACKEND_URL": "http://env.example/", "IOTGW_MQTT_CA_FILE": "env-ca.crt"},
			want: func(f *config.File) {
				f.Backend.URL = "http://env.example/"
				f.Backend.Workers = 3 // from the file: no variable for it
				f.MQTT.CAFile = "env-ca.crt"
			},
		},
		{
			name: "limits from the file and the environment",
			yaml: "limits:\n  device_rate: 2.5\n  quarantine_after: 20\n  quarantine_window: 30s\n  notice_interval: 0s\n",
			env:  map[string]string{"IOTGW_LIMITS_DEVICE_BURST": "7"},
			want: func(f *config.File) {
				f.Limits.DeviceRate = 2.5
				f.Limits.DeviceBurst = 7
				f.Limits.QuarantineAfter = 20
				f.Limits.QuarantineWindow = 30 * time.Second
				f.Limits.NoticeInterval = 0
			},
		},
		{
			name: "an empty variable does not override",
			yaml: "backend:\n  url: http://file.example/\n",
			env:  map[string]string{"IOTGW_BACKEND_URL": ""},
			want: func(f *config.File) { f.Backend.URL = "http://file.example/" },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			setEnv(t, tc.env)
			path := ""
			if tc.yaml != "" {
				path = writeYAML(t, tc.yaml)
			}
			got, err := config.LoadUnvalidated(path)
			if err != nil {
				t.Fatalf("LoadUnvalidated: %v", err)
			}
			want := config.Defaults()
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("loaded config differs from expected\n got: %+v\nwant: %+v", got, want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string // "" loads no file
		env  map[string]string
		want []string // substrings of the one-line error
	}{
		{
			name: "unknown key in a section",
			yaml: "backend:\n  urll: http://x/\n",
			want: []string{"backend.urll", "did you mean backend.url?"},
		},
		{
			name: "unknown top-level section",
			yaml: "backends:\n  url: http://x/\n",
			want: []string{"backends.url", "did you mean backend.url?"},
		},
		{
			name: "two unknown keys on one line",
			yaml: "log:\n  level: info\n  colour: true\nextra: 1\n",
			want: []string{"log.colour", "extra"},
		},
		{
			name: "bad duration in the file",
			yaml: "backend:\n  timeout: 10x\n",
			want: []string{"backend.timeout", `"10x"`},
		},
		{
			name: "bad duration in the environment",
			env:  map[string]string{"IOTGW_MQTT_KEEPALIVE": "soon"},
			want: []string{"mqtt.keepalive", `"soon"`},
		},
		{
			name: "bare number as a duration",
			yaml: "backend:\n  timeout: 10\n",
			want: []string{"backend.timeout", "bare number", `"10s"`},
		},
		{
			name: "unknown top-level key is named as such",
			yaml: "nope: 1\n",
			want: []string{"unknown key nope"},
		},
		{
			name: "a typo in a key gets the nearest key",
			yaml: "mqtt:\n  brokr: ssl://127.0.0.1:8884\n",
			want: []string{"mqtt.brokr", "did you mean mqtt.broker?"},
		},
		{
			name: "a typo in a section gets the nearest key",
			yaml: "mqt:\n  broker: ssl://127.0.0.1:8884\n",
			want: []string{"mqt.broker", "did you mean mqtt.broker?"},
		},
		{
			name: "bad integer",
			yaml: "outbox:\n  max_pending: lots\n",
			want: []string{"outbox.max_pending"},
		},
		{
			name: "section that is not a map",
			yaml: "mqtt: [1, 2]\n",
			want: []string{"mqtt"},
		},
		{
			name: "malformed YAML names the file",
			yaml: "backend: {url: [\n",
			want: []string{"iotgw.yaml"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			setEnv(t, tc.env)
			path := ""
			if tc.yaml != "" {
				path = writeYAML(t, tc.yaml)
			}
			for name, load := range map[string]func(string) (config.File, error){"Load": config.Load, "LoadUnvalidated": config.LoadUnvalidated} {
				_, err := load(path)
				if err == nil {
					t.Fatalf("%s: no error", name)
				}
				msg := err.Error()
				if strings.Contains(msg, "\n") {
					t.Errorf("%s: error spans several lines: %q", name, msg)
				}
				for _, w := range tc.want {
					if !strings.Contains(msg, w) {
						t.Errorf("%s: error %q does not mention %q", name, msg, w)
					}
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	cleanEnv(t)
	path := filepath.Join(t.TempDir(), "absent.yaml")
	for name, load := range map[string]func(string) (config.File, error){"Load": config.Load, "LoadUnvalidated": config.LoadUnvalidated} {
		_, err := load(path)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: error %v, want one wrapping fs.ErrNotExist", name, err)
		}
		if err != nil && !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
	}
}

// validEnv returns variables that make the defaults a valid configuration:
// a broker, real TLS files (made with pkg/pki) and a backend URL.
func validEnv(t *testing.T) map[string]string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	if err := pki.Init(dir, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	p := pki.Paths(dir)
	return map[string]string{
		"IOTGW_MQTT_BROKER":    "ssl://localhost:8883",
		"IOTGW_MQTT_CA_FILE":   p.CACert,
		"IOTGW_MQTT_CERT_FILE": p.GatewayCert,
		"IOTGW_MQTT_KEY_FILE":  p.GatewayKey,
		"IOTGW_BACKEND_URL":    "http://127.0.0.1:8080/ingest/{device_id}",
	}
}

func TestLoadValidates(t *testing.T) {
	base := validEnv(t)
	tests := []struct {
		name    string
		yaml    string
		env     map[string]string // on top of base
		wantErr string            // "" for success
	}{
		{name: "valid"},
		{name: "valid with a file", yaml: "backend:\n  workers: 2\nlog:\n  format: console\n"},
		{name: "backend url not http", env: map[string]string{"IOTGW_BACKEND_URL": "ftp://x/"}, wantErr: "backend.url"},
		{name: "bad log level", yaml: "log:\n  level: loud\n", wantErr: "log.level"},
		{name: "bad log format", env: map[string]string{"IOTGW_LOG_FORMAT": "xml"}, wantErr: "log.format"},
		{name: "section validation runs", env: map[string]string{"IOTGW_OUTBOX_SYNCHRONOUS": "sometimes"}, wantErr: "outbox.synchronous"},
		{name: "rate limit without a burst", env: map[string]string{"IOTGW_LIMITS_DEVICE_BURST": "0"}, wantErr: "limits.device_burst"},
		{name: "rate limit off", env: map[string]string{"IOTGW_LIMITS_DEVICE_RATE": "0", "IOTGW_LIMITS_DEVICE_BURST": "0"}},
		{name: "negative quarantine", yaml: "limits:\n  quarantine_after: -1\n", wantErr: "limits.quarantine_after"},
		{name: "unreadable CA file", env: map[string]string{"IOTGW_MQTT_CA_FILE": "/nonexistent/ca.crt"}, wantErr: "mqtt.ca_file"},
		{name: "unreadable backend token file", env: map[string]string{"IOTGW_BACKEND_BEARER_TOKEN_FILE": "/nonexistent/token"}, wantErr: "backend.bearer_token_file"},
		{name: "backend client cert without key", env: map[string]string{"IOTGW_BACKEND_URL": "https://127.0.0.1/in", "IOTGW_BACKEND_CERT_FILE": "/x.pem"}, wantErr: "backend.cert_file and backend.key_file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			setEnv(t, base)
			setEnv(t, tc.env)
			path := ""
			if tc.yaml != "" {
				path = writeYAML(t, tc.yaml)
			}
			f, err := config.Load(path)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Load: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Load: error %v, want one naming %q", err, tc.wantErr)
			}
			if tc.wantErr == "" && f.MQTT.CAFile != base["IOTGW_MQTT_CA_FILE"] {
				t.Errorf("mqtt.ca_file = %q, want %q", f.MQTT.CAFile, base["IOTGW_MQTT_CA_FILE"])
			}
			// LoadUnvalidated accepts what Load rejects, as long as it parses.
			if _, err := config.LoadUnvalidated(path); err != nil {
				t.Errorf("LoadUnvalidated: %v", err)
			}
		})
	}
}

func TestLoadDefaultsAreIncomplete(t *testing.T) {
	cleanEnv(t)
	_, err := config.Load("")
	if err == nil || !strings.Contains(err.Error(), "mqtt.broker") {
		t.Fatalf("Load with no file and no environment: %v, want the missing mqtt.broker named", err)
	}
}

// TestExampleConfigKeys keeps examples/iotgw.yaml in step with the code:
// it must load without unknown keys and set what it says it sets.
func TestExampleConfigKeys(t *testing.T) {
	cleanEnv(t)
	f, err := config.LoadUnvalidated(filepath.Join("..", "..", "examples", "iotgw.yaml"))
	if err != nil {
		t.Fatalf("examples/iotgw.yaml: %v", err)
	}
	if f.Backend.URL != "http://127.0.0.1:8080/ingest/{device_id}" || f.MQTT.Broker != "ssl://localhost:8884" || f.MQTT.ClientID != "iotgw:gateway" {
		t.Errorf("examples/iotgw.yaml loaded backend.url %q, mqtt.broker %q", f.Backend.URL, f.MQTT.Broker)
	}
}

func TestLogConfigLogger(t *testing.T) {
	tests := []struct {
		level, format string
		ok            bool
		enabled       zapcore.Level // enabled at this level
		disabled      zapcore.Level // and not at this one
	}{
		{"info", "json", true, zapcore.InfoLevel, zapcore.DebugLevel},
		{"debug", "console", true, zapcore.DebugLevel, zapcore.DebugLevel - 1},
		{"error", "json", true, zapcore.ErrorLevel, zapcore.WarnLevel},
		{"verbose", "json", false, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.level+"/"+tc.format, func(t *testing.T) {
			log, err := config.LogConfig{Level: tc.level, Format: tc.format}.Logger()
			if (err == nil) != tc.ok {
				t.Fatalf("Logger: %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				return
			}
			if !log.Core().Enabled(tc.enabled) || log.Core().Enabled(tc.disabled) {
				t.Errorf("level %s: enabled(%s)=%v enabled(%s)=%v", tc.level,
					tc.enabled, log.Core().Enabled(tc.enabled), tc.disabled, log.Core().Enabled(tc.disabled))
			}
		})
	}
}
