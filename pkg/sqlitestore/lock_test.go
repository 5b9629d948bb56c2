package sqlitestore_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/sqlitestore"
)

// TestLock: a second Lock on one outbox fails naming the holder's pid;
// after unlock it succeeds again.
func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	unlock, err := sqlitestore.Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sqlitestore.Lock(path) // flock conflicts across open files, even in one process
	if !errors.Is(err, sqlitestore.ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second Lock = %v, want ErrLocked naming pid %d", err, os.Getpid())
	}
	unlock()
	unlock2, err := sqlitestore.Lock(path)
	if err != nil {
		t.Fatalf("Lock after unlock: %v", err)
	}
	unlock2()
}
