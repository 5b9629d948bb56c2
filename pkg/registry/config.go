package registry

import (
	"errors"
	"time"
)

// Config holds the registry settings.
type Config struct {
	// Path is the SQLite file. Default "iotgw.db".
	Path string `mapstructure:"path"`
	// Refresh is how often the gateway checks the file for changes. Default 1s.
	Refresh time.Duration `mapstructure:"refresh"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{Path: "iotgw.db", Refresh: time.Second} }

// Validate checks the settings.
func (c Config) Validate() error {
	if c.Path == "" {
		return errors.New("registry.path: required")
	}
	if c.Refresh < 10*time.Millisecond || c.Refresh > time.Minute {
		return errors.New("registry.refresh: must be 10ms..1m")
	}
	return nil
}
