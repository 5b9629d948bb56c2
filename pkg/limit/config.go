package limit

import (
	"fmt"
	"time"
)

// Config is the `limits` section of the gateway's configuration.
type Config struct {
	// DeviceRate is the sustained number of messages per second one device
	// may send; beyond it messages are rejected as rate_limited before the
	// HMAC. 0 turns the limit off. Default 100 (AWS IoT's per-connection limit).
	DeviceRate float64 `mapstructure:"device_rate"`
	// DeviceBurst is how many messages a device may send at once above the
	// rate (the bucket's size). Default 200. Must be ≥ 1 when DeviceRate > 0.
	DeviceBurst int `mapstructure:"device_burst"`
	// NoticeInterval is the least time between two rejection notices to one
	// device for one reason; the rejections between are counted, not
	// answered, so a flood cannot turn the gateway into an amplifier. It
	// is also the least time between two answers to one device's time
	// requests (docs/PROTOCOL.md, section 4c), limited apart from the
	// notices. Default 1s; 0 answers every rejection and time request.
	NoticeInterval time.Duration `mapstructure:"notice_interval"`
	// QuarantineAfter disables a device in the registry after this many
	// bad_signature rejections within QuarantineWindow. 0 (the default)
	// turns quarantine off.
	QuarantineAfter int `mapstructure:"quarantine_after"`
	// QuarantineWindow is the window QuarantineAfter counts in. Default 1m.
	QuarantineWindow time.Duration `mapstructure:"quarantine_window"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{DeviceRate: 100, DeviceBurst: 200, NoticeInterval: time.Second, QuarantineWindow: time.Minute}
}

// Validate checks the settings.
func (c Config) Validate() error {
	switch {
	case c.DeviceRate < 0 || c.DeviceRate > 1e6 || c.DeviceRate != c.DeviceRate:
		return fmt.Errorf("limits.device_rate: must be 0 (off) .. 1000000 messages/s, got %v", c.DeviceRate)
	case c.DeviceRate > 0 && (c.DeviceBurst < 1 || c.DeviceBurst > 1e6):
		return fmt.Errorf("limits.device_burst: must be 1..1000000 while limits.device_rate is on, got %d", c.DeviceBurst)
	case c.DeviceBurst < 0:
		return fmt.Errorf("limits.device_burst: must not be negative, got %d", c.DeviceBurst)
	case c.NoticeInterval < 0 || c.NoticeInterval > time.Hour:
		return fmt.Errorf("limits.notice_interval: must be 0 (off) .. 1h, got %s", c.NoticeInterval)
	case c.QuarantineAfter < 0 || c.QuarantineAfter > maxQuarantineAfter:
		return fmt.Errorf("limits.quarantine_after: must be 0 (off) .. %d, got %d", maxQuarantineAfter, c.QuarantineAfter)
	case c.QuarantineAfter > 0 && (c.QuarantineWindow <= 0 || c.QuarantineWindow > 24*time.Hour):
		return fmt.Errorf("limits.quarantine_window: must be positive and at most 24h, got %s", c.QuarantineWindow)
	}
	return nil
}

// maxQuarantineAfter bounds the per-device ring of bad_signature times.
const maxQuarantineAfter = 10000
