package sim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSecretsFromFile(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    map[string]string
		wantErr string
	}{
		{"ids and secrets", "# comment\n\nsensor_001\t0123456789abcdef\n  sensor_002   s3cret with spaces  \n",
			map[string]string{"sensor_001": "0123456789abcdef", "sensor_002": "s3cret with spaces"}, ""},
		{"no secret", "sensor_001\n", nil, ":1: want"},
		{"bad id", "sensor/1 abc\n", nil, ":1: want"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "secrets")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ReadSecretsFile(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d secrets, want %d", len(got), len(tc.want))
			}
			for id, s := range tc.want {
				if string(got[id]) != s {
					t.Errorf("secret of %s = %q, want %q", id, got[id], s)
				}
			}
		})
	}
}

func TestPrintTable(t *testing.T) {
	var b strings.Builder
	err := printTable(&b, []demoRow{
		{Scenario: "(a) ok", Expected: "x", Observed: "x", Pass: true},
		{Scenario: "(b) longer name", Expected: "rejected: replay", Observed: "no reply in 5s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `scenario        | expected         | observed       | result
----------------+------------------+----------------+-------
(a) ok          | x                | x              | PASS
(b) longer name | rejected: replay | no reply in 5s | FAIL

1 of 2 scenarios behaved as expected.
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestPercentiles(t *testing.T) {
	d := []time.Duration{5 * time.Millisecond, time.Millisecond, 3 * time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond}
	got := percentiles(d, 0, 50, 100)
	if got[0] != 1 || got[1] != 3 || got[2] != 5 {
		t.Errorf("percentiles = %v, want [1 3 5]", got)
	}
	if got := percentiles(nil, 50); got[0] != 0 {
		t.Errorf("percentiles(nil) = %v", got)
	}
}
