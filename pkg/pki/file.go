package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
)

// File modes of what Init and Issue write.
const (
	certMode      os.FileMode = 0o644
	keyMode       os.FileMode = 0o600
	brokerKeyMode os.FileMode = 0o640
)

// BrokerGroup is the group given broker.key when it exists, so that
// Mosquitto, after dropping root, can read its key.
const BrokerGroup = "mosquitto"

// placement says how writeFile puts a finished file in place.
type placement int

const (
	// replace renames over any existing file.
	replace placement = iota
	// createNew links the file into place, failing with ErrExists if the
	// name is taken; nothing is ever overwritten.
	createNew
)

// writeFile writes data to path atomically: to a temporary file in the
// same directory, synced and given its final mode (and, if group, the
// BrokerGroup) before it is renamed or linked into place, then the
// directory is synced. Readers see either no file or the whole file.
func writeFile(path string, data []byte, mode os.FileMode, how placement, group bool) error {
	return writeFileSync(path, data, mode, how, group, true)
}

// writeFileSync is writeFile; without sync it neither syncs the file nor
// its directory, and the caller makes a batch durable at once (syncTree).
func writeFileSync(path string, data []byte, mode os.FileMode, how placement, group, sync bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil && group {
		chgrp(f)
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	switch how {
	case createNew:
		if err := os.Link(tmp, path); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s %w", path, ErrExists)
			}
			return fmt.Errorf("write %s: %w", path, err)
		}
		os.Remove(tmp)
	default:
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if !sync {
		return nil
	}
	return syncDir(dir)
}

// chgrp gives f to BrokerGroup if that group exists. Failure (the group
// is missing, or the caller is neither root nor a member) is ignored: the
// file then stays readable by its owner only, which is enough when
// Mosquitto runs as that owner.
func chgrp(f *os.File) {
	g, err := user.LookupGroup(BrokerGroup)
	if err != nil {
		return
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return
	}
	_ = f.Chown(-1, gid)
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir) //nolint:gosec // G304: a directory of our own PKI, opened only to fsync it
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
