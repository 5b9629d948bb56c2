package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
)

func TestDeviceRevoke(t *testing.T) {
	dir := t.TempDir()
	certs, db := filepath.Join(dir, "certs"), filepath.Join(dir, "registry.db")
	if err := pki.Init(certs, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sensor_001", "sensor_002"} {
		if r := runCLI(t, "", "device", "add", id, "--issue-cert", "--certs", certs, "--db", db); r.code != 0 {
			t.Fatalf("add %s: %v %s", id, r.err, r.stderr)
		}
	}
	if err := pki.Issue(certs, "orphan", time.Now()); err != nil { // a certificate without a registry row
		t.Fatal(err)
	}
	steps := []struct {
		name    string
		args    []string
		code    int
		stdout  []string
		errText string
	}{
		{"revoke", []string{"device", "revoke", "sensor_001", "--certs", certs, "--db", db}, 0,
			[]string{"revoked device sensor_001 in the registry", "revoked certificate of sensor_001 (serial ", "restart Mosquitto", "mosquitto#35",
				"docker compose up -d --force-recreate pki mosquitto gateway"}, ""},
		{"again", []string{"device", "revoke", "sensor_001", "--certs", certs, "--db", db}, 0,
			[]string{"already on", "restart Mosquitto"}, ""},
		{"show says revoked", []string{"device", "show", "sensor_001", "--db", db}, 0, []string{"revoked"}, ""},
		{"enable refuses", []string{"device", "enable", "sensor_001", "--db", db}, 1, nil, "revoked"},
		{"audited", []string{"audit", "tail", "--db", db}, 0, []string{"device.revoke", "sensor_001"}, ""},
		{"not in the registry", []string{"device", "revoke", "orphan", "--certs", certs, "--db", db}, 0,
			[]string{"revoked certificate of orphan"}, ""},
		{"no certificate", []string{"device", "revoke", "sensor_003", "--certs", certs, "--db", db}, 1, nil, "no certificate"},
		{"no --certs", []string{"device", "revoke", "sensor_002", "--db", db}, 2, nil, "--certs DIR is required"},
		{"the gateway", []string{"device", "revoke", "gateway", "--certs", certs, "--db", db}, 2, nil, "reserved"},
		{"bad id", []string{"device", "revoke", "..", "--certs", certs, "--db", db}, 2, nil, "bad device id"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			r := runCLI(t, "", s.args...)
			if r.code != s.code {
				t.Fatalf("exit %d, want %d (err %v, stderr %q)", r.code, s.code, r.err, r.stderr)
			}
			for _, w := range s.stdout {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
				}
			}
			if s.errText != "" && (r.err == nil || !strings.Contains(r.err.Error(), s.errText)) {
				t.Errorf("err = %v, want one containing %q", r.err, s.errText)
			}
		})
	}
	reg, err := registry.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	for id, enabled := range map[string]bool{"sensor_001": false, "sensor_002": true} {
		d, err := reg.Get(context.Background(), id)
		if err != nil || d.Enabled != enabled {
			t.Errorf("%s: enabled %v (%v), want %v", id, d.Enabled, err, enabled)
		}
	}
	list, err := pki.ReadCRL(certs)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.RevokedCertificateEntries); n != 2 {
		t.Errorf("CRL lists %d certificates, want 2 (sensor_001 and orphan)", n)
	}
}
