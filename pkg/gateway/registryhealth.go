package gateway

import (
	"errors"
	"time"

	"github.com/iotgw/iotgw/pkg/registry"
)

// registryStale returns the /readyz line for a stale registry cache, or
// "" when its last refresh read and opened everything.
func (g *Gateway) registryStale() string {
	since, err := g.keys.Stale()
	if err == nil {
		return ""
	}
	return "registry: stale since " + since.UTC().Format(time.RFC3339) + ": " + err.Error()
}

// registryRefreshFailed is the log message for a failed or incomplete
// registry refresh.
func registryRefreshFailed(err error) string {
	var se *registry.StaleError
	if errors.As(err, &se) {
		return "registry refresh incomplete: every change applied, but devices whose key does not open are rejected as key_unavailable"
	}
	return "registry refresh failed; serving the last snapshot (nothing changed since can apply)"
}
