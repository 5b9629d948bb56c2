package registry

import (
	"errors"
	"fmt"
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

// SecurityConfig is the security section: sealing device secrets at rest.
type SecurityConfig struct {
	// KEKFile is the key-encryption key that seals device secrets in the
	// registry (AES-256-GCM): a file of mode 0600 or stricter holding 32 raw
	// random bytes or 64 hex characters (iotgw kek new FILE makes one).
	// Default "": secrets are stored in the clear and every start warns.
	KEKFile string `mapstructure:"kek_file"`
	// PreviousKEKFile is the KEK before kek_file, for a rotation with
	// gateways running (docs/SECURITY.md, "Rotating the KEK"): a gateway
	// holding both opens a registry sealed under either, so it keeps
	// working while iotgw kek rotate re-seals the registry from this KEK
	// to kek_file's. Same file rules as kek_file. Read by iotgw serve (at
	// start and on SIGHUP, with kek_file) and config check; the other
	// commands use kek_file alone. Default "".
	PreviousKEKFile string `mapstructure:"previous_kek_file"`
	// RequireKEK makes a missing kek_file fatal at start. Default false.
	RequireKEK bool `mapstructure:"require_kek"`
}

// DefaultSecurityConfig returns the defaults.
func DefaultSecurityConfig() SecurityConfig { return SecurityConfig{} }

// ErrNoKEK is the error (and warning) for a registry without a KEK.
var ErrNoKEK = errors.New("device secrets are NOT sealed: set security.kek_file")

// Validate checks the settings.
func (c SecurityConfig) Validate() error {
	if c.RequireKEK && c.KEKFile == "" {
		return fmt.Errorf("security.require_kek: %w", ErrNoKEK)
	}
	if c.PreviousKEKFile != "" && c.KEKFile == "" {
		return errors.New("security.previous_kek_file: set only beside security.kek_file (the KEK it is the previous one of)")
	}
	return nil
}

// LoadKEKs returns the configured KEK and previous KEK (each nil when not
// configured). The two must differ.
func (c SecurityConfig) LoadKEKs() (cur, prev *KEK, err error) {
	if cur, err = c.LoadKEK(); err != nil || c.PreviousKEKFile == "" {
		return cur, nil, err
	}
	if prev, err = LoadKEK(c.PreviousKEKFile); err != nil {
		return nil, nil, fmt.Errorf("security.previous_kek_file: %w", err)
	}
	if cur != nil && prev.fp == cur.fp {
		return nil, nil, errors.New("security.previous_kek_file: holds the same KEK as security.kek_file")
	}
	return cur, prev, nil
}

// LoadKEK returns the configured KEK, or nil when none is configured.
func (c SecurityConfig) LoadKEK() (*KEK, error) {
	if c.KEKFile == "" {
		return nil, nil
	}
	k, err := LoadKEK(c.KEKFile)
	if err != nil {
		return nil, fmt.Errorf("security.kek_file: %w", err)
	}
	return k, nil
}
