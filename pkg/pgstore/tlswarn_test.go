package pgstore

import (
	"strings"
	"testing"
)

// TestPlaintextWarning: a DSN that lets the connection to a remote host
// run in plaintext (sslmode disable, allow, prefer: libpq's default) or
// with TLS that checks no certificate (require) is warned about, naming
// the host and never the password; loopback, Unix sockets and
// verify-full are not.
func TestPlaintextWarning(t *testing.T) {
	for _, env := range []string{"PGSSLMODE", "PGHOST", "PGSSLROOTCERT", "PGSERVICE", "PGSERVICEFILE"} {
		t.Setenv(env, "")
	}
	tests := []struct {
		dsn  string
		want string // "" for no warning; else a part of it
	}{
		{"postgres://root@127.0.0.1:5432/test", ""},
		{"postgres://root@localhost/test?sslmode=disable", ""},
		{"host=/var/run/postgresql dbname=test", ""},
		{"postgres://iotgw@db.internal/iotgw?sslmode=verify-full", ""},
		{"postgres://iotgw@db.internal/iotgw?sslmode=verify-ca", ""},
		{"postgres://iotgw:s3cr3t-pw@db.internal/iotgw", `may run without TLS to "db.internal"`},
		{"postgres://iotgw@db.internal/iotgw?sslmode=prefer", `without TLS to "db.internal"`},
		{"postgres://iotgw@db.internal/iotgw?sslmode=allow", `without TLS to "db.internal"`},
		{"postgres://iotgw@10.0.0.5/iotgw?sslmode=disable", `without TLS to "10.0.0.5"`},
		{"postgres://iotgw:s3cr3t-pw@db.internal/iotgw?sslmode=require", `checks no certificate to "db.internal"`},
		{"host=127.0.0.1,db2.internal dbname=iotgw sslmode=disable", `without TLS to "db2.internal"`},
		{"host=db1.internal,db2.internal dbname=iotgw sslmode=verify-full", ""},
		{"not a dsn ::", ""},
	}
	for _, tc := range tests {
		w := PlaintextWarning(tc.dsn)
		switch {
		case tc.want == "" && w != "":
			t.Errorf("%s: warned %q", tc.dsn, w)
		case tc.want != "" && !strings.Contains(w, tc.want):
			t.Errorf("%s: %q, want it to say %q", tc.dsn, w, tc.want)
		}
		if strings.Contains(w, "s3cr3t-pw") || strings.Contains(w, "\n") || strings.Contains(w, "127.0.0.1") {
			t.Errorf("%s: %q names the password, a loopback host, or has two lines", tc.dsn, w)
		}
	}
}
