package gateway

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/limit"
	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/storage"
	"github.com/iotgw/iotgw/pkg/validate"
)

// Config is everything `iotgw serve` needs: each stage's own Config plus
// the gateway's.
type Config struct {
	MQTT mqttio.Config `mapstructure:"mqtt"`
	// Storage chooses the engine: sqlite (registry.path, outbox.path) or
	// postgres (storage.dsn, shared by several gateways).
	Storage    storage.Config  `mapstructure:"storage"`
	Registry   registry.Config `mapstructure:"registry"`
	Validation validate.Config `mapstructure:"validation"`
	Replay     replay.Config   `mapstructure:"replay"`
	Outbox     outbox.Config   `mapstructure:"outbox"`
	Backend    forward.Config  `mapstructure:"backend"`
	HTTP       HTTPConfig      `mapstructure:"http"`
	Pipeline   PipelineConfig  `mapstructure:"pipeline"`
	Limits     limit.Config    `mapstructure:"limits"`
	// Security seals device secrets at rest (security.kek_file).
	Security registry.SecurityConfig `mapstructure:"security"`
	// ShutdownGrace is how long SIGTERM waits for in-flight work. Default 10s.
	ShutdownGrace time.Duration `mapstructure:"shutdown_grace"`
}

// HTTPConfig is the operations endpoint.
type HTTPConfig struct {
	// Listen is the address serving /healthz, /readyz and /metrics; "" disables it. Default "127.0.0.1:9464".
	Listen string `mapstructure:"listen"`
	// Pprof serves /debug/pprof/ on the same address. Default false. Only
	// allowed when Listen is a loopback address (127.0.0.0/8, ::1,
	// localhost); Validate refuses it otherwise.
	Pprof bool `mapstructure:"pprof"`
	// ReadyMaxPendingAge makes /readyz answer 503 while the oldest row
	// waiting for the backend is older than this (forwarding is stuck or
	// far behind: a dead backend, a lost database, a lease never granted).
	// 0 turns the check off. Default 5m; at most 24h.
	ReadyMaxPendingAge time.Duration `mapstructure:"ready_max_pending_age"`
}

// PipelineConfig sizes the validation stage.
type PipelineConfig struct {
	// Workers is the number of validation workers; a device always maps to
	// the same worker, which keeps its order. Default 4.
	Workers int `mapstructure:"workers"`
	// QueueDepth is each worker's queue. Keep Workers×QueueDepth above the
	// broker's max_inflight_messages so Paho's router never blocks. Default 1024.
	QueueDepth int `mapstructure:"queue_depth"`
	// AdaptiveProcs runs `iotgw serve` on one P (GOMAXPROCS=1) while the
	// process uses less than 0.55 cores, and on the runtime's default as
	// soon as it uses more, messages wait (Backlog), its threads wait for
	// a CPU or goroutines queue for the one P: at steady
	// rates one P saves a thread wake-up per hand-off between goroutines
	// (docs/PERFORMANCE.md, "Steady rates"). Off when the GOMAXPROCS
	// environment variable is set. Default true.
	AdaptiveProcs bool `mapstructure:"adaptive_procs"`
}

// DefaultConfig returns every default.
func DefaultConfig() Config {
	return Config{
		MQTT:          mqttio.DefaultConfig(),
		Storage:       storage.DefaultConfig(),
		Registry:      registry.DefaultConfig(),
		Validation:    validate.DefaultConfig(),
		Replay:        replay.DefaultConfig(),
		Outbox:        outbox.DefaultConfig(),
		Backend:       forward.DefaultConfig(),
		HTTP:          HTTPConfig{Listen: "127.0.0.1:9464", ReadyMaxPendingAge: 5 * time.Minute},
		Pipeline:      PipelineConfig{Workers: 4, QueueDepth: 1024, AdaptiveProcs: true},
		Limits:        limit.DefaultConfig(),
		Security:      registry.DefaultSecurityConfig(),
		ShutdownGrace: 10 * time.Second,
	}
}

// Validate checks every section and returns the first problem, naming its key.
func (c Config) Validate() error {
	for _, v := range []interface{ Validate() error }{c.MQTT, c.Storage, c.Registry, c.Validation, c.Replay, c.Outbox, c.Backend, c.Limits, c.Security} {
		if err := v.Validate(); err != nil {
			return err
		}
	}
	if err := c.Storage.ValidatePOST(c.Backend.Timeout); err != nil {
		return err
	}
	if err := c.HTTP.Validate(); err != nil {
		return err
	}
	if c.Pipeline.Workers < 1 || c.Pipeline.Workers > 256 {
		return fmt.Errorf("pipeline.workers: must be 1..256, got %d", c.Pipeline.Workers)
	}
	if c.Pipeline.QueueDepth < 1 {
		return errors.New("pipeline.queue_depth: must be at least 1")
	}
	if c.ShutdownGrace <= 0 {
		return errors.New("shutdown_grace: must be positive")
	}
	return nil
}

// Validate checks the listen address and that pprof is only ever served on
// a loopback address: its profiles show memory contents and goroutine
// stacks, and /debug/pprof/profile costs CPU on demand.
func (c HTTPConfig) Validate() error {
	if c.ReadyMaxPendingAge < 0 || c.ReadyMaxPendingAge > 24*time.Hour {
		return fmt.Errorf("http.ready_max_pending_age: must be 0 (off) or up to 24h, got %s", c.ReadyMaxPendingAge)
	}
	if c.Listen == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("http.listen: %q is not host:port", c.Listen)
	}
	if c.Pprof && !isLoopback(host) {
		return fmt.Errorf("http.pprof: true needs a loopback http.listen (127.0.0.1, ::1, localhost), got %q", c.Listen)
	}
	return nil
}

// isLoopback reports whether host is "localhost" or a loopback IP; an empty
// host (all interfaces) and other names are not.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
