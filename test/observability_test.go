package test

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The files the operations team loads; test paths are relative to test/.
const (
	alertsFile     = "../deploy/prometheus/alerts.yml"
	alertTestsFile = "../deploy/prometheus/alerts_test.yml"
	dashboardFile  = "../deploy/grafana/iotgw.json"
)

// prometheusSynthetic are series Prometheus itself makes at scrape time;
// a gateway never serves them.
var prometheusSynthetic = map[string]bool{"up": true}

// TestAlertRulesPromtool: promtool accepts the rules and their unit tests
// (each alert fires on what should trigger it). promtool comes from the
// Debian package prometheus (scripts/install-deps.sh); without it the test
// skips loudly on a developer machine and fails in CI.
func TestAlertRulesPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool not found in CI (install the Debian package prometheus; scripts/install-deps.sh does): %v", err)
		}
		t.Skip("SKIPPED: promtool not found; the alert rules are NOT checked. Install it: apt-get install prometheus (or run scripts/install-deps.sh)")
	}
	for _, args := range [][]string{{"check", "rules", alertsFile}, {"test", "rules", alertTestsFile}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestObservability runs one real deployment that accepts messages,
// rejects one, and meets a backend error, then checks what it exposes:
// every metric name the dashboard and the alert rules use is served; every
// *_total is a counter; no secret appears in the log, /metrics or the CLI.
func TestObservability(t *testing.T) {
	f := newFixture(t, "sensor_001", "sensor_002")
	var failed atomic.Bool
	f.backend.setBehave(func(r recorded) (int, string, time.Duration) {
		// The first POST of sensor_002 gets a 503 (retried), the rest 200.
		if r.Path == "/ingest/sensor_002" && failed.CompareAndSwap(false, true) {
			return 503, `{"error":"overloaded"}`, 0
		}
		return 200, `{"ok":true}`, 0
	})
	g := f.startGateway(gatewayOpts{})
	d1, d2 := f.device("sensor_001"), f.device("sensor_002")
	now := time.Now().Unix()
	for i := range 3 {
		raw, _ := d1.signed(`{"n":`+string(rune('0'+i))+`}`, now)
		d1.publish("", raw)
	}
	raw, _ := d2.signed(`{"n":9}`, now)
	d2.publish("", raw)
	forged, _ := signAs("sensor_001", strings.Repeat("ab", 32), `{"forged":true}`, now)
	d1.publish("", forged)

	f.backend.waitCount(t, 4, 15*time.Second)
	g.waitMetric(`iotgw_messages_total{reason="bad_signature",result="rejected"}`, 1, 10*time.Second)
	g.waitMetric(`iotgw_backend_responses_total{class="5xx"}`, 1, 10*time.Second)
	g.waitMetric(`iotgw_backend_responses_total{class="2xx"}`, 4, 10*time.Second)
	g.waitMetric(`iotgw_messages_total{reason="none",result="accepted"}`, 4, 10*time.Second)
	types, body := scrape(t, g)

	t.Run("dashboard and alert metrics are served", func(t *testing.T) {
		used := map[string][]string{} // metric → where it is used
		for _, e := range alertExprs(t) {
			for _, m := range promqlMetrics(e) {
				used[m] = append(used[m], "alerts.yml")
			}
		}
		for _, e := range dashboardExprs(t) {
			for _, m := range promqlMetrics(e) {
				used[m] = append(used[m], "iotgw.json")
			}
		}
		if len(used) < 10 {
			t.Fatalf("only %d metric names found in the dashboard and rules: the parser is broken: %v", len(used), used)
		}
		for _, m := range sortedKeys(used) {
			if prometheusSynthetic[m] {
				continue
			}
			if _, ok := types[baseName(m, types)]; !ok {
				t.Errorf("%s (used in %s) is not served by a live gateway's /metrics", m, strings.Join(slices.Compact(used[m]), ", "))
			}
		}
	})

	t.Run("every _total is a counter", func(t *testing.T) {
		for _, name := range sortedKeys(types) {
			if strings.HasSuffix(name, "_total") && types[name] != "counter" {
				t.Errorf("%s is a %s; a _total must be a counter", name, types[name])
			}
		}
	})

	t.Run("broker connection state follows the broker", func(t *testing.T) {
		rx, tx := `iotgw_broker_connected{connection="receive"}`, `iotgw_broker_connected{connection="replies"}`
		waitGauge := func(series string, want float64) {
			t.Helper()
			deadline := time.Now().Add(15 * time.Second)
			for g.metric(series) != want {
				if time.Now().After(deadline) {
					t.Fatalf("%s = %v, want %v within 15s", series, g.metric(series), want)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		waitGauge(rx, 1)
		waitGauge(tx, 1)
		f.broker.Stop()
		waitGauge(rx, 0)
		waitGauge(tx, 0)
		f.broker.Restart()
		waitGauge(rx, 1)
		waitGauge(tx, 1)
	})

	t.Run("no secret in logs, metrics or the CLI", func(t *testing.T) {
		show := []string{}
		for _, id := range []string{"sensor_001", "sensor_002"} {
			out, err := runCLI(f.bin, "", "device", "show", id, "--db", f.db)
			if err != nil {
				t.Fatalf("device show %s: %v\n%s", id, err, out)
			}
			show = append(show, out)
		}
		list, err := runCLI(f.bin, "", "device", "list", "--db", f.db)
		if err != nil {
			t.Fatalf("device list: %v\n%s", err, list)
		}
		// Refused admin commands given a secret: the error must not echo it.
		var refused []string
		for _, s := range secretsOf(f)[:1] {
			for _, stdin := range []string{s.value + "\n", " " + s.value + "\n"} { // a duplicate device; a bad secret
				out, err := runCLI(f.bin, stdin, "device", "add", "sensor_001", "--secret-stdin", "--db", f.db)
				if err == nil {
					t.Fatalf("device add sensor_001 again succeeded:\n%s", out)
				}
				refused = append(refused, out)
			}
		}
		g.signal(15, 15*time.Second) // SIGTERM: the shutdown lines are in the log too
		logText, err := os.ReadFile(g.logPath)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(logText), `"reason":"bad_signature"`) || !strings.Contains(string(logText), "forward failed") {
			t.Fatalf("the log lacks the rejection or the backend error; the run did not exercise them:\n%s", lastBytes(logText, 2048))
		}
		haystacks := map[string]string{"gateway log": string(logText), "/metrics": body, "device list": list,
			"device show": strings.Join(show, "\n"), "refused device add": strings.Join(refused, "\n")}
		for _, s := range secretsOf(f) {
			for where, text := range haystacks {
				for _, form := range secretForms(s.value) {
					if strings.Contains(strings.ToLower(text), strings.ToLower(string(form))) {
						t.Errorf("%s contains %s", where, s.name)
					}
				}
			}
		}
	})
}

type namedSecret struct{ name, value string }

// secretsOf lists every secret of a fixture that must never be printed.
// Add new ones here (bearer tokens, the KEK, signing keys) as they exist.
func secretsOf(f *fixture) []namedSecret {
	var out []namedSecret
	for _, id := range sortedKeys(f.secrets) {
		s := f.secrets[id]
		out = append(out, namedSecret{"the secret of " + id, s})
		// The downlink key (PROTOCOL.md): as good as the secret for forging replies.
		mac := hmac.New(sha256.New, []byte(s))
		mac.Write([]byte("iotgw/v1/downlink"))
		out = append(out, namedSecret{"the downlink key of " + id, hex.EncodeToString(mac.Sum(nil))})
	}
	return out
}

// secretForms are the spellings of s worth searching for: itself and, for
// a hex secret, the hex of its bytes and half of it (a truncated print).
// scrape reads /metrics: the type of each metric family (from # TYPE) and
// the whole text.
func scrape(t *testing.T, g *gatewayProc) (map[string]string, string) {
	t.Helper()
	resp, err := httpClient.Get("http://" + g.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
		}
	}
	if len(types) == 0 {
		t.Fatalf("no # TYPE lines in /metrics:\n%s", b)
	}
	return types, string(b)
}

// baseName maps a histogram's or summary's _bucket, _sum and _count series
// to the family name that # TYPE declares.
func baseName(m string, types map[string]string) string {
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(m, suf); ok {
			if typ := types[base]; typ == "histogram" || (typ == "summary" && suf != "_bucket") {
				return base
			}
		}
	}
	return m
}

// alertExprs returns every rule's expr in alerts.yml.
func alertExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	var out []string
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			if r.Expr == "" {
				t.Errorf("%s: rule %s%s has no expr", alertsFile, r.Alert, r.Record)
			}
			out = append(out, r.Expr)
		}
	}
	return out
}

var labelValues = regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,`)

// dashboardExprs returns every PromQL expression of the dashboard: each
// "expr" anywhere in it (panels, rows, targets), and the metric of each
// label_values() template query.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var out []string
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(x, k)
			}
		case []any:
			for _, x := range v {
				walk(x, key)
			}
		case string:
			switch key {
			case "expr":
				out = append(out, v)
			case "query", "definition":
				if m := labelValues.FindStringSubmatch(v); m != nil {
					out = append(out, m[1])
				}
			}
		}
	}
	walk(doc, "")
	return out
}

// promqlKeywords are identifiers of PromQL that are not metric names.
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true, "inf": true, "nan": true,
}

// labelListers are followed by a parenthesised list of label names.
var labelListers = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

var nameMatcher = regexp.MustCompile(`__name__\s*=\s*"([^"]+)"`)

var modifierAhead = regexp.MustCompile(`^(?i)(by|without)\s*\(`)

// aggregationModifier reports whether rest starts with "by (" or "without (".
func aggregationModifier(rest string) bool { return modifierAhead.MatchString(rest) }

// promqlMetrics returns the metric names an expression selects: the
// identifiers that are not inside a string, a label matcher {...}, a range
// or subquery [...], a label list after by/without/on/ignoring/group_*,
// not a function or aggregation name (followed by "("), not a keyword, a
// number or a Grafana variable ($x, ${x}). A selector written
// {__name__="x"} counts as x.
func promqlMetrics(expr string) []string {
	var out []string
	add := func(n string) {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	// skipString returns the index just past the string that starts at i.
	skipString := func(i int) int {
		q := expr[i]
		for i++; i < len(expr); i++ {
			switch {
			case expr[i] == '\\' && q != '`':
				i++
			case expr[i] == q:
				return i + 1
			}
		}
		return len(expr)
	}
	// skipGroup returns the index just past the bracket that closes the
	// one at i, and the group's text; strings inside are skipped whole.
	skipGroup := func(i int) (int, string) {
		open := expr[i]
		close := map[byte]byte{'(': ')', '[': ']', '{': '}'}[open]
		depth, start := 0, i
		for i < len(expr) {
			switch c := expr[i]; c {
			case '"', '\'', '`':
				i = skipString(i)
				continue
			case open:
				depth++
			case close:
				depth--
				if depth == 0 {
					return i + 1, expr[start : i+1]
				}
			}
			i++
		}
		return len(expr), expr[start:]
	}
	afterLister := false
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '#': // a comment, to the end of the line
			if j := strings.IndexByte(expr[i:], '\n'); j >= 0 {
				i += j
			} else {
				i = len(expr)
			}
		case c == '"' || c == '\'' || c == '`':
			i = skipString(i)
		case c == '{':
			var sel string
			i, sel = skipGroup(i)
			if m := nameMatcher.FindStringSubmatch(sel); m != nil {
				add(m[1])
			}
		case c == '[':
			i, _ = skipGroup(i)
		case c == '(' && afterLister:
			i, _ = skipGroup(i)
			afterLister = false
		case c == '$':
			i++
			if i < len(expr) && expr[i] == '{' {
				i, _ = skipGroup(i)
			}
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(expr) && isIdent(expr[j]) {
				j++
			}
			word := expr[i:j]
			k := j
			for k < len(expr) && strings.IndexByte(" \t\r\n", expr[k]) >= 0 {
				k++
			}
			switch lw := strings.ToLower(word); {
			case labelListers[lw]:
				afterLister = true
			case promqlKeywords[lw]:
			case k < len(expr) && expr[k] == '(': // a function or an aggregation
			case aggregationModifier(expr[k:]): // sum by (x) (...)
			default:
				add(word)
			}
			i = j
		default:
			i++
		}
	}
	return out
}

// TestPromqlMetrics: the name extraction itself, on the shapes the
// dashboard and the rules use.
func TestPromqlMetrics(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up{job="iotgw"} == 0`, []string{"up"}},
		{`sum by (instance, reason) (rate(a_total{result="rejected", reason=~"x|y"}[5m])) > 0.2`, []string{"a_total"}},
		{`histogram_quantile(0.99, sum by (le) (rate(h_bucket{instance=~"$instance"}[$__rate_interval])))`, []string{"h_bucket"}},
		{"deriv(p[10m]) > 0 and o > 300\n# a comment naming not_a_metric\n", []string{"p", "o"}},
		{`a / on (instance) group_left (version) b offset 5m`, []string{"a", "b"}},
		{`{__name__="n", job="x"} unless m{l="}{[("}`, []string{"n", "m"}},
		{`max without (connection) (c{l='a\'b'}) * 1e3 + ${var} - inf`, []string{"c"}},
		{`rate(x[5m:30s])`, []string{"x"}},
	} {
		if got := promqlMetrics(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("promqlMetrics(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestPprofRefusedOffLoopback: `iotgw serve` with http.pprof on and a
// non-loopback http.listen exits at once with one line naming http.pprof.
// (192.0.2.1 is TEST-NET-1: not ours, so even a gateway without the check
// could not bind it; nothing ever listens off loopback.)
func TestPprofRefusedOffLoopback(t *testing.T) {
	f := newFixture(t)
	cfg := strings.Replace(f.config(9464, gatewayOpts{}), "listen: 127.0.0.1:9464", "listen: 192.0.2.1:9464", 1)
	if !strings.Contains(cfg, "listen: 192.0.2.1:9464") || !strings.Contains(cfg, "pprof: true") {
		t.Fatalf("fixture config changed shape:\n%s", cfg)
	}
	path := filepath.Join(f.dir, "pprof.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(f.bin, "serve", "--config", path)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("iotgw serve kept running with pprof on a non-loopback address:\n%s", out)
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(string(out), "http.pprof") {
		t.Fatalf("iotgw serve = %v, want a non-zero exit naming http.pprof; output:\n%s", err, out)
	}
}
