package replay

import "fmt"

// Config holds the replay store settings.
type Config struct {
	// MaxEntries bounds the ids remembered; past it new messages are
	// refused (fail closed) and retried, never a live id evicted. Default 2000000.
	MaxEntries int `mapstructure:"max_entries"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{MaxEntries: DefaultMaxEntries} }

// Validate checks the settings.
func (c Config) Validate() error {
	if c.MaxEntries < 1000 || c.MaxEntries > 1<<30 {
		return fmt.Errorf("replay.max_entries: must be 1000..%d, got %d", 1<<30, c.MaxEntries)
	}
	return nil
}
