package sqlitestore

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ErrLocked means another process holds the outbox's lock file: a second
// gateway on one outbox would forward the same rows twice.
var ErrLocked = errors.New("in use by another gateway")

// Lock takes the exclusive lock file path+".lock" (flock, released by the
// kernel when the process dies, so a kill -9 leaves no stale lock) and
// writes the process id into it. Only a gateway takes it: the CLI's
// deadletter commands open the outbox beside a running gateway (SQLite
// WAL serializes their writes). unlock releases it.
func Lock(path string) (unlock func(), err error) {
	name := path + ".lock"
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600) //nolint:gosec // G304: beside the operator's outbox.path
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "another process"
		if b, rerr := os.ReadFile(name); rerr == nil { //nolint:gosec // G304: as above
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = "pid " + strconv.Itoa(pid)
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is %w (%s holds %s)", path, ErrLocked, holder, name)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0) // the pid only names the holder in an error
	}
	return func() { f.Close() }, nil
}
