package pgstore

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/iotgw/iotgw/pkg/internal/netx"
)

// PlaintextWarning returns one line for the operator when dsn lets a
// connection to a host that is neither loopback nor a Unix socket run
// without TLS (sslmode disable, allow or prefer, the default) or with TLS
// that checks no certificate (sslmode require), and "" otherwise. On
// such a path someone on the network can read and change what the
// gateways commit, claim and forward. It names hosts only, never the
// rest of the DSN (it may hold a password); a DSN that does not parse
// gives "" (Open reports it).
func PlaintextWarning(dsn string) string {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return ""
	}
	type attempt struct {
		host string
		tls  *tls.Config
	}
	all := []attempt{{cfg.Host, cfg.TLSConfig}}
	for _, f := range cfg.Fallbacks {
		all = append(all, attempt{f.Host, f.TLSConfig})
	}
	var plain, unverified []string
	for _, a := range all {
		switch {
		case isLocal(a.host):
		case a.tls == nil:
			plain = append(plain, a.host)
		case a.tls.InsecureSkipVerify && a.tls.VerifyPeerCertificate == nil:
			unverified = append(unverified, a.host)
		}
	}
	plain = hosts(plain)
	unverified = slices.DeleteFunc(hosts(unverified), func(h string) bool { return slices.Contains(plain, h) })
	var what []string
	if len(plain) > 0 {
		what = append(what, fmt.Sprintf("may run without TLS to %s", strings.Join(plain, ", ")))
	}
	if len(unverified) > 0 {
		what = append(what, fmt.Sprintf("uses TLS that checks no certificate to %s", strings.Join(unverified, ", ")))
	}
	if len(what) == 0 {
		return ""
	}
	return "storage.dsn: the PostgreSQL connection " + strings.Join(what, " and ") +
		": someone on that network can read and change what the gateways store and forward; add sslmode=verify-full (and sslrootcert) to storage.dsn"
}

// hosts sorts, dedupes and quotes host names.
func hosts(h []string) []string {
	slices.Sort(h)
	h = slices.Compact(h)
	for i := range h {
		h[i] = fmt.Sprintf("%q", h[i])
	}
	return h
}

// isLocal reports whether host is a Unix socket directory, localhost or a
// loopback address.
func isLocal(host string) bool { return strings.HasPrefix(host, "/") || netx.IsLoopbackHost(host) }
