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

// TestPrintTableFits120 (issue 16, item 15): the demo's own rows made a
// table 242 characters wide; long cells now wrap at word boundaries in
// their column, so every line fits 120 characters and keeps every word.
func TestPrintTableFits120(t *testing.T) {
	rows := []demoRow{
		{`(o) "intruder" connects with the gateway's client id "iotgw:gateway"`, "intruder gets nothing; readings all answered 200",
			"intruder got 0; 6/6 answered 200, backend got 6/6 once", true},
		{"(p) sensor_001 floods 2000 validly signed messages", "most rate_limited, ≤ ~1 notice/s, sensor_002 still answered",
			"1783/2000 refused (rate_limited), 1 rate_limited notices in 1.2 s, sensor_002 answered in 18 ms", true},
		{`(j) unregistered device "intruder" with a valid certificate`, "no reply, not forwarded (unknown_device)",
			"no reply; gateway counted unknown_device +1, backend: not seen", false},
		{"(x) " + strings.Repeat("a", 150), "b", "c", true},
	}
	var b strings.Builder
	if err := printTable(&b, rows); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, l := range strings.Split(out, "\n") {
		if n := len([]rune(l)); n > 120 {
			t.Errorf("line of %d characters: %q", n, l)
		}
	}
	for _, r := range rows {
		for _, cell := range []string{r.Scenario, r.Expected, r.Observed} {
			for _, w := range strings.Fields(cell) {
				if len(w) < 30 && !strings.Contains(out, w) {
					t.Errorf("cell %q lost the word %q in:\n%s", cell, w, out)
				}
			}
		}
	}
	if n := strings.Count(out, "a") - strings.Count(rows[0].Scenario+rows[0].Expected+rows[0].Observed+rows[1].Scenario+rows[1].Expected+
		rows[1].Observed+rows[2].Scenario+rows[2].Expected+rows[2].Observed+"scenarios behaved as expected"+"scenario", "a"); n != 150 {
		t.Errorf("the 150-letter word kept %d letters", n)
	}
	if !strings.Contains(out, "3 of 4 scenarios behaved as expected.") {
		t.Errorf("no summary line in:\n%s", out)
	}
}
