package test

import (
	"bytes"
	"context"
	"database/sql"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/test/harness"
)

// engineRig runs the CLI and raw SQL against the registry of one engine,
// so that one scenario runs on SQLite and on PostgreSQL alike.
type engineRig struct {
	f   *fixture
	dsn string // "" for SQLite
}

// cli runs `iotgw args...` against the rig's registry with kek as
// security.kek_file ("" for none), fails the test if it fails, and
// returns its standard output.
func (e *engineRig) cli(kek, stdin string, args ...string) string {
	e.f.t.Helper()
	out, stderr, err := e.tryCLI(kek, stdin, args...)
	if err != nil {
		e.f.t.Fatalf("iotgw %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

func (e *engineRig) tryCLI(kek, stdin string, args ...string) (stdout, stderr string, err error) {
	env := os.Environ()
	if e.dsn != "" {
		env = append(env, "IOTGW_STORAGE_ENGINE=postgres", "IOTGW_STORAGE_DSN="+e.dsn)
	} else {
		env = append(env, "IOTGW_REGISTRY_PATH="+e.f.db)
	}
	if kek != "" {
		env = append(env, "IOTGW_SECURITY_KEK_FILE="+kek)
	}
	cmd := exec.Command(e.f.bin, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var o, eb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &eb
	err = cmd.Run()
	return o.String(), eb.String(), err
}

// add issues a certificate for id and registers it sealed under kek.
func (e *engineRig) add(id, kek string) {
	e.f.t.Helper()
	harness.IssueDevice(e.f.t, e.f.certs, id)
	secret, err := registry.NewSecret()
	if err != nil {
		e.f.t.Fatal(err)
	}
	e.cli(kek, secret+"\n", "device", "add", id, "--secret-stdin")
	e.f.secrets[id] = secret
}

// exec runs one statement on the registry's database, as an intruder or
// a botched manual repair would, bypassing the CLI.
func (e *engineRig) exec(q string, args ...any) {
	e.f.t.Helper()
	ctx := context.Background()
	if e.dsn != "" {
		c, err := pgx.Connect(ctx, e.dsn)
		if err != nil {
			e.f.t.Fatal(err)
		}
		defer c.Close(ctx) //nolint:errcheck // test helper
		if _, err := c.Exec(ctx, q, args...); err != nil {
			e.f.t.Fatalf("%s: %v", q, err)
		}
		return
	}
	db, err := sql.Open("sqlite3", e.f.db+"?_busy_timeout=5000")
	if err != nil {
		e.f.t.Fatal(err)
	}
	defer db.Close()
	q = strings.NewReplacer("$1", "?", "$2", "?", "$3", "?").Replace(q)
	if _, err := db.ExecContext(ctx, q, args...); err != nil {
		e.f.t.Fatalf("%s: %v", q, err)
	}
}

// start starts a gateway on the rig's engine with kek.
func (e *engineRig) start(kek string) *gatewayProc {
	e.f.t.Helper()
	sec := "security:\n  kek_file: " + kek + "\n  require_kek: true\n"
	if e.dsn == "" {
		return e.f.startGateway(gatewayOpts{extra: sec})
	}
	o := sharedOpts(e.dsn, 0)
	o.extra += sec
	return e.f.startGateway(o)
}

// newRig makes a fixture on engine "sqlite" or "postgres" (a private
// database) with devices ids sealed under a fresh KEK, which it returns.
func newRig(t *testing.T, engine string, ids ...string) (*engineRig, string) {
	f := newFixture(t)
	e := &engineRig{f: f}
	if engine == "postgres" {
		e.dsn = pgtest.New(t)
	}
	kek := f.newKEKFile("kek1")
	for _, id := range ids {
		e.add(id, kek)
	}
	return e, kek
}

// verdicts are the counters verdict reads, by the name it returns.
var verdicts = map[string]string{
	"accepted":        "iotgw_messages_accepted_total",
	"key_unavailable": `iotgw_messages_rejected_total{reason="key_unavailable"}`,
	"disabled":        `iotgw_messages_rejected_total{reason="disabled"}`,
	"bad_signature":   `iotgw_messages_rejected_total{reason="bad_signature"}`,
	"unknown_device":  `iotgw_messages_rejected_total{reason="unknown_device"}`,
}

// verdictWith sends one fresh message signed with secret as d and
// reports which counter of verdicts it moved, summed over gws (a share
// group gives it to one of them): "accepted" or the rejection reason. (A
// device whose key is unavailable gets no notice: there is no key to
// sign one with, so the counters, not the replies, tell.)
func verdictWith(t *testing.T, gws []*gatewayProc, d *device, secret string) string {
	t.Helper()
	before := map[string]float64{}
	for name, series := range verdicts {
		before[name] = sum(gws, series)
	}
	raw, _ := signAs(d.id, secret, `{"probe":true}`, time.Now().Unix())
	d.publish("", raw)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for name, series := range verdicts {
			if sum(gws, series) > before[name] {
				return name
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no verdict counted", d.id)
	return ""
}

// verdict is verdictWith one gateway and the device's registered secret.
func verdict(t *testing.T, g *gatewayProc, d *device) string {
	t.Helper()
	return verdictWith(t, []*gatewayProc{g}, d, d.secret)
}

// verdictAny is verdict over several gateways.
func verdictAny(t *testing.T, gws []*gatewayProc, d *device) string {
	t.Helper()
	return verdictWith(t, gws, d, d.secret)
}

// readyz returns /readyz's status code and body.
func readyz(t *testing.T, g *gatewayProc) (int, string) {
	t.Helper()
	resp, err := httpClient.Get("http://" + g.http + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// effectWithin is how long after a registry change its effect must show:
// ten refreshes of the fixture's registry.refresh (200ms).
const effectWithin = 2 * time.Second

// TestRevocationAfterKEKRotation: the gateway holds KEK 1; the operator
// re-seals the registry under KEK 2 (without restarting the gateway) and
// then disables d1. Within 2 s d1 is rejected as disabled, d2 (whose
// key the gateway can no longer open) as key_unavailable, never accepted
// under the secret it remembers; /readyz says the registry is stale and
// the metric the alert reads says so too. Before the fix the refresh
// failed as a whole and both devices stayed accepted.
func TestRevocationAfterKEKRotation(t *testing.T) {
	for _, engine := range []string{"sqlite", "postgres"} {
		t.Run(engine, func(t *testing.T) {
			e, kek1 := newRig(t, engine, "fc_d1", "fc_d2")
			g := e.start(kek1)
			d1, d2 := e.f.device("fc_d1"), e.f.device("fc_d2")
			if v := verdict(t, g, d1); v != "accepted" {
				t.Fatalf("d1 before: %s", v)
			}
			kek2 := e.f.newKEKFile("kek2")
			e.cli(kek1, "", "kek", "rotate", "--new", kek2)
			e.cli(kek2, "", "device", "disable", "fc_d1")
			time.Sleep(effectWithin)
			if v := verdict(t, g, d1); v != "disabled" {
				t.Fatalf("disabled d1 after a KEK rotation: %s, want disabled", v)
			}
			if v := verdict(t, g, d2); v != "key_unavailable" {
				t.Fatalf("d2, whose key the gateway cannot open: %s, want key_unavailable", v)
			}
			if n := g.metric(`iotgw_messages_rejected_total{reason="key_unavailable"}`); n != 1 {
				t.Fatalf("key_unavailable rejections counted: %v, want 1", n)
			}
			// Nor is its time request answered (there is no key to sign
			// with): refused, and no rejection.
			d2.publish(envelope.TimeTopic("fc_d2"), envelope.TimeRequest([]byte("00112233445566778899aabbccddeeff")))
			g.waitMetric(`iotgw_time_requests_total{result="refused"}`, 1, 5*time.Second)
			time.Sleep(quiet)
			if len(d2.replies) != 0 {
				t.Fatalf("fc_d2, whose key the gateway cannot open, got %d downlinks", len(d2.replies))
			}
			if n := g.metric(`iotgw_messages_rejected_total{reason="key_unavailable"}`); n != 1 {
				t.Fatalf("key_unavailable rejections counted after a time request: %v, want 1", n)
			}
			code, body := readyz(t, g)
			if code != http.StatusServiceUnavailable || !strings.Contains(body, "registry: stale since ") {
				t.Fatalf("/readyz: %d %q, want 503 registry: stale since", code, body)
			}
			if v := g.metric("iotgw_registry_stale"); v != 1 {
				t.Fatalf("iotgw_registry_stale = %v, want 1", v)
			}
		})
	}
}

// TestRevocationWithOneBadRow: one key row in the clear is slipped into a
// sealed registry (for fc_bad), then d2 is disabled. Within 2 s d2 is
// rejected as disabled, fc_bad as key_unavailable, and d1 is still
// accepted: one bad row costs its own device only. Before the fix the bad
// row failed every refresh, and d2 stayed accepted.
func TestRevocationWithOneBadRow(t *testing.T) {
	for _, engine := range []string{"sqlite", "postgres"} {
		t.Run(engine, func(t *testing.T) {
			e, kek := newRig(t, engine, "fc_d1", "fc_d2", "fc_bad")
			g := e.start(kek)
			d1, d2, bad := e.f.device("fc_d1"), e.f.device("fc_d2"), e.f.device("fc_bad")
			for _, d := range []*device{d1, d2, bad} {
				if v := verdict(t, g, d); v != "accepted" {
					t.Fatalf("%s before: %s", d.id, v)
				}
			}
			e.exec(`UPDATE device_keys SET secret = $1, sealed = $2 WHERE device_id = $3`, []byte(e.f.secrets["fc_bad"]), false, "fc_bad")
			e.cli(kek, "", "device", "disable", "fc_d2")
			time.Sleep(effectWithin)
			if v := verdict(t, g, d2); v != "disabled" {
				t.Fatalf("disabled d2 beside a bad row: %s, want disabled", v)
			}
			if v := verdict(t, g, bad); v != "key_unavailable" {
				t.Fatalf("device with the bad row: %s, want key_unavailable", v)
			}
			if v := verdict(t, g, d1); v != "accepted" {
				t.Fatalf("d1, untouched: %s, want accepted", v)
			}
			code, body := readyz(t, g)
			if code != http.StatusServiceUnavailable || !strings.Contains(body, "registry: stale since ") || !strings.Contains(body, "fc_bad") {
				t.Fatalf("/readyz: %d %q, want 503 registry: stale since … naming fc_bad", code, body)
			}
			// Repaired (the row re-sealed by a rotation of the device's
			// key), the registry is fresh again.
			e.exec(`DELETE FROM device_keys WHERE device_id = $1`, "fc_bad")
			e.cli(kek, "", "device", "rotate", "fc_bad")
			deadline := time.Now().Add(10 * time.Second)
			for {
				if code, _ := readyz(t, g); code == http.StatusOK {
					break
				}
				if time.Now().After(deadline) {
					_, body := readyz(t, g)
					t.Fatalf("/readyz still not ready after the repair: %s", body)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if v := g.metric("iotgw_registry_stale"); v != 0 {
				t.Fatalf("iotgw_registry_stale = %v after the repair, want 0", v)
			}
		})
	}
}
