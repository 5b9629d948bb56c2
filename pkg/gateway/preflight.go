package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/iotgw/iotgw/pkg/forward"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/storage"
)

// Preflight runs every start-up check of New that needs neither the
// broker nor the backend, and returns New's error for the first that
// fails: the settings and their files (TLS identities, secret file
// modes), the KEK files, the registry (it exists; it is sealed under the
// KEK held, or the previous one; every secret opens), the storage engine
// (PostgreSQL reachable) and the outbox's directory. It opens the
// registry as New does, so pending migrations are applied, but it never
// creates a registry or an outbox, binds no port and connects to neither
// the broker nor the backend. iotgw config check runs it.
func Preflight(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	kek, prev, err := cfg.Security.LoadKEKs()
	if err != nil {
		return err
	}
	// As New opens it, without the outbox: its lock belongs to a running gateway.
	e, err := storage.Open(ctx, cfg.Storage, cfg.Outbox, cfg.Registry.Path,
		registry.WithKEK(kek), registry.WithPreviousKEK(prev), registry.WithClock(time.Now))
	if err != nil {
		return err
	}
	defer e.Close()
	reg := e.Registry
	if kek == nil && reg.Sealed() {
		return fmt.Errorf("registry %s: %w", cfg.Storage.Describe(cfg.Registry.Path), registry.ErrSealed)
	}
	keys, err := registry.NewCache(ctx, reg)
	if err != nil {
		return err
	}
	keys.Close()
	if cfg.Storage.FilesLocal() { // New creates the outbox file, in a directory that must exist
		dir := filepath.Dir(cfg.Outbox.Path)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return fmt.Errorf("outbox.path: directory %s: %w", dir, errors.Join(err, notDir(st)))
		}
	}
	if _, err := forward.NewClient(cfg.Backend); err != nil {
		return err
	}
	return nil
}

func notDir(st os.FileInfo) error {
	if st != nil && !st.IsDir() {
		return errors.New("not a directory")
	}
	return nil
}
