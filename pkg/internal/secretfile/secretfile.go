// Package secretfile reads files that hold secrets (the KEK, bearer
// tokens, private keys, signing keys) and refuses those that other users
// could read or change.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// MaxSize bounds what Read loads: no secret file of iotgw is larger.
const MaxSize = 1 << 20

// ErrTooOpen is returned (wrapped in a *ModeError) for a file whose mode
// lets its group or other users read or write it.
var ErrTooOpen = errors.New("readable or writable by other users")

// ModeError says which file is too open and how to fix it. It never
// carries the file's contents.
type ModeError struct {
	Path string
	Mode os.FileMode
}

func (e *ModeError) Error() string {
	return fmt.Sprintf("%s: mode %04o is %v; run chmod 600 %s", e.Path, uint32(e.Mode.Perm()), ErrTooOpen, e.Path)
}

// Unwrap lets errors.Is(err, ErrTooOpen) match.
func (e *ModeError) Unwrap() error { return ErrTooOpen }

// Check refuses a secret file that is not a regular file or whose mode
// grants any permission to its group or to other users (mode & 0077).
func Check(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkInfo(path, fi)
}

func checkInfo(path string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return &ModeError{Path: path, Mode: fi.Mode()}
	}
	return nil
}

// Read checks path as Check does, then returns its contents (at most
// MaxSize bytes). The check is made on the opened file, so a file swapped
// between the check and the read is caught.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path) // #nosec G304 -- the operator names the file
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkInfo(path, fi); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxSize)
	}
	return b, nil
}
