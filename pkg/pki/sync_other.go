//go:build !linux

package pki

import (
	"fmt"
	"os"
)

// syncFiles makes the files just written durable, one fsync each.
func syncFiles(paths []string) error {
	for _, p := range paths {
		f, err := os.Open(p) //nolint:gosec // G304: a file SignBatch just wrote
		if err != nil {
			return fmt.Errorf("sync %s: %w", p, err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("sync %s: %w", p, err)
		}
	}
	return nil
}
