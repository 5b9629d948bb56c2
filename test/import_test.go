package test

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pgstore/pgtest"
	"github.com/iotgw/iotgw/test/harness"
)

// TestImportServedByRunningGateway imports devices in bulk, sealed under a
// KEK, on each storage engine: a batch before the gateway starts and a
// batch while it runs (with --skip-existing over one device of the first
// batch). Devices of both batches, using the secrets from the 0600 secrets
// files, get verified replies from the real gateway; the skipped device
// keeps its first secret. A device imported with a CSR made by openssl
// connects with the certificate the import signed.
func TestImportServedByRunningGateway(t *testing.T) {
	for _, engine := range []string{"sqlite", "postgres"} {
		t.Run(engine, func(t *testing.T) {
			f := newFixture(t)
			kek := filepath.Join(f.dir, "kek")
			env := append(os.Environ(), "IOTGW_SECURITY_KEK_FILE="+kek, "IOTGW_REGISTRY_PATH="+f.db)
			opts := gatewayOpts{extra: "security:\n  kek_file: " + kek + "\n"}
			if engine == "postgres" {
				dsn := pgtest.New(t)
				env = append(env, "IOTGW_STORAGE_ENGINE=postgres", "IOTGW_STORAGE_DSN="+dsn)
				shared := sharedOpts(dsn, 0)
				opts.extra += shared.extra
				opts.edit = shared.edit
				opts.timeout = shared.timeout
			}
			cli := func(args ...string) (string, error) {
				cmd := exec.Command(f.bin, args...)
				cmd.Env = env
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			if out, err := cli("kek", "new", kek); err != nil {
				t.Fatalf("kek new: %v\n%s", err, out)
			}
			batch := func(name string, ids []string, extra ...string) map[string]string {
				t.Helper()
				in := filepath.Join(f.dir, name+".csv")
				if err := os.WriteFile(in, []byte("id\n"+strings.Join(ids, "\n")+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				secrets := filepath.Join(f.dir, name+"-secrets.csv")
				out, err := cli(append([]string{"device", "import", in, "--secrets-out", secrets}, extra...)...)
				if err != nil {
					t.Fatalf("device import %s: %v\n%s", name, err, out)
				}
				if strings.Contains(out, "NOT sealed") {
					t.Fatalf("import not sealed:\n%s", out)
				}
				fi, err := os.Stat(secrets)
				if err != nil || fi.Mode().Perm() != 0o600 {
					t.Fatalf("secrets file %v %v", fi, err)
				}
				fh, err := os.Open(secrets)
				if err != nil {
					t.Fatal(err)
				}
				defer fh.Close()
				recs, err := csv.NewReader(fh).ReadAll()
				if err != nil {
					t.Fatal(err)
				}
				got := map[string]string{}
				for _, r := range recs[1:] {
					got[r[0]] = r[1]
				}
				return got
			}
			var early, late []string
			for i := range 5 {
				early = append(early, fmt.Sprintf("early_%d", i))
				late = append(late, fmt.Sprintf("late_%d", i))
			}
			first := batch("first", early)
			f.startGateway(opts)
			second := batch("second", append(late, "early_1"), "--skip-existing")
			if len(second) != len(late) || second["early_1"] != "" {
				t.Fatalf("second batch secrets %v: the skipped device got a new secret", second)
			}
			// A device whose key openssl made, imported from JSON lines
			// with its CSR: its certificate is signed by the import.
			csr, key := opensslDeviceKey(t, "imp_csr", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")
			csrPEM, err := os.ReadFile(csr)
			if err != nil {
				t.Fatal(err)
			}
			line, _ := json.Marshal(map[string]string{"id": "imp_csr", "csr": string(csrPEM)})
			jl := filepath.Join(f.dir, "csr.jsonl")
			if err := os.WriteFile(jl, append(line, '\n'), 0o600); err != nil {
				t.Fatal(err)
			}
			csrSecrets := filepath.Join(f.dir, "csr-secrets.jsonl")
			if out, err := cli("device", "import", jl, "--certs", f.certs, "--secrets-out", csrSecrets); err != nil {
				t.Fatalf("device import with a CSR: %v\n%s", err, out)
			}
			b, err := os.ReadFile(csrSecrets)
			if err != nil {
				t.Fatal(err)
			}
			var sl struct{ ID, Secret string }
			if err := json.Unmarshal(b, &sl); err != nil || sl.ID != "imp_csr" {
				t.Fatalf("secrets file %q: %v", b, err)
			}
			f.secrets["imp_csr"] = sl.Secret
			placeDeviceKey(t, f.certs, "imp_csr", key)

			for _, id := range []string{"early_0", "early_1", "late_0", "late_4", "imp_csr"} {
				secret := first[id]
				if secret == "" {
					secret = second[id]
				}
				if secret != "" {
					f.secrets[id] = secret
					harness.IssueDevice(t, f.certs, id)
				}
				d := f.device(id)
				raw, msgID := d.signed(`{"n":1}`, time.Now().Unix())
				d.publish("", raw)
				r, ok := d.nextReply(10 * time.Second)
				if !ok || !r.valid || replyPayload(t, r)["in_reply_to"] != msgID || replyPayload(t, r)["status"] != float64(200) {
					t.Fatalf("%s: reply ok=%v valid=%v %s; want a verified 200 reply to %s", id, ok, r.valid, r.raw, msgID)
				}
			}
			if out, err := cli("audit", "tail", "-n", "20"); err != nil || strings.Count(out, "device.import") != 11 || !strings.Contains(out, "device.import.csr") {
				t.Fatalf("audit tail (%v):\n%s", err, out)
			}
		})
	}
}
