package replay

import "fmt"

// DefaultMaxEntriesPerDevice is the default per-device quota of remembered
// ids: 100,000, above the 60,000 that limits.device_rate's default (100
// msg/s) lets a device fill in the longest an id can live (twice the default
// max_clock_skew, 10 min, for a timestamp at now+5 min), and 5% of
// DefaultMaxEntries, so no one device can fill the fleet's store.
const DefaultMaxEntriesPerDevice = 100_000

// Config holds the replay store settings.
type Config struct {
	// MaxEntries bounds the ids remembered; past it new messages are
	// refused (fail closed) with reason quota_exceeded, never a live id
	// evicted. Default 2000000.
	MaxEntries int `mapstructure:"max_entries"`
	// MaxEntriesPerDevice bounds the ids remembered for any one device;
	// past it that device's new messages are refused with reason
	// quota_exceeded (acked, counted, answered with a notice) and other
	// devices are unaffected. 0 turns the quota off. Default 100000.
	MaxEntriesPerDevice int `mapstructure:"max_entries_per_device"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{MaxEntries: DefaultMaxEntries, MaxEntriesPerDevice: DefaultMaxEntriesPerDevice}
}

// Validate checks the settings.
func (c Config) Validate() error {
	if c.MaxEntries < 1000 || c.MaxEntries > 1<<30 {
		return fmt.Errorf("replay.max_entries: must be 1000..%d, got %d", 1<<30, c.MaxEntries)
	}
	if c.MaxEntriesPerDevice < 0 || c.MaxEntriesPerDevice > c.MaxEntries {
		return fmt.Errorf("replay.max_entries_per_device: must be 0 (off) or 1..replay.max_entries (%d), got %d", c.MaxEntries, c.MaxEntriesPerDevice)
	}
	return nil
}
