// Package netx holds the small network predicates more than one stage
// needs.
package netx

import (
	"net"
	"strings"
)

// IsLoopbackHost reports whether host (a name or an IP, without port) is
// localhost (any case) or a loopback address: 127.0.0.0/8 or ::1.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
