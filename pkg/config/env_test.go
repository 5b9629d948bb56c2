package config

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestUnknownEnvRefused(t *testing.T) {
	for _, tc := range []struct {
		name, env, want string
	}{
		{"typo", "IOTGW_BAKEND_URL=x", "IOTGW_BAKEND_URL: unknown setting; did you mean IOTGW_BACKEND_URL?"},
		{"far from any key", "IOTGW_DEMO_DIR=x", "IOTGW_DEMO_DIR: unknown setting (variables starting IOTGW_"},
		{"known", "IOTGW_BACKEND_URL=http://127.0.0.1:1/x", ""},
		{"other prefix", "DEMO_DIR=x", ""},
		{"the tests' PostgreSQL (pgtest)", "IOTGW_TEST_PG=postgres://root@127.0.0.1:5432/test", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, v, _ := strings.Cut(tc.env, "=")
			t.Setenv(k, v)
			_, err := LoadUnvalidated("")
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v, want one line starting %q", err, tc.want)
			}
		})
	}
}

// TestDefaultsYAMLLoads: the printed defaults load back to Defaults().
func TestDefaultsYAMLLoads(t *testing.T) {
	path := t.TempDir() + "/d.yaml"
	if err := writeFile(path, DefaultsYAML()); err != nil {
		t.Fatal(err)
	}
	f, err := LoadUnvalidated(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(mustJSON(t, f)), string(mustJSON(t, Defaults())); got != want {
		t.Fatalf("defaults YAML loads as\n%s\nwant\n%s", got, want)
	}
}

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
