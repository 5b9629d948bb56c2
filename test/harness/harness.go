package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the caller binds it; that race is
// accepted in tests.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// PKI creates a CA, broker certificate and gateway certificate with
// pki.Init in a new temporary directory, and returns the directory. The
// broker certificate is valid for localhost, 127.0.0.1, ::1 and hosts.
//
// The directory, and the temporary directories above it, are made 0755 so
// that Mosquitto, which drops to the mosquitto user when started as root,
// can read ca.crt, broker.crt and broker.key (0640, group mosquitto).
func PKI(t testing.TB, hosts ...string) string {
	t.Helper()
	dir := ReadableTempDir(t)
	if err := pki.Init(dir, hosts, time.Now()); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return dir
}

// IssueDevice issues a client certificate for device id with the CA in
// dir (see pki.Issue); pki.DeviceCert names the files.
func IssueDevice(t testing.TB, dir, id string) {
	t.Helper()
	if err := pki.Issue(dir, id, time.Now()); err != nil {
		t.Fatalf("harness: %v", err)
	}
}

// ReadableTempDir returns t.TempDir() made readable and traversable by
// other users (0755, with the per-test directory above it), for files that
// Mosquitto reads after dropping root. When running as root it fails the
// test if a directory further up (above os.TempDir) is not traversable by
// others; set TMPDIR to a directory that is.
func ReadableTempDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := openUp(dir); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return dir
}

// openUp chmods dir and its ancestors below os.TempDir() to 0755 and, when
// running as root, checks that the ancestors from os.TempDir() up are
// traversable by others.
func openUp(dir string) error {
	tmp, err := filepath.EvalSymlinks(os.TempDir())
	if err != nil {
		return fmt.Errorf("resolve temp dir: %w", err)
	}
	dir, err = filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", dir, err)
	}
	p := dir
	for ; p != tmp && p != filepath.Dir(p); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			return fmt.Errorf("make %s readable: %w", p, err)
		}
	}
	if os.Geteuid() != 0 {
		return nil
	}
	for ; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check %s: %w", p, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not traversable by the mosquitto user (mode %v); set TMPDIR to a directory that is", p, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// RepoRoot returns the directory of the go.mod that encloses the working
// directory (go test runs each package in its own directory).
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return root
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repo root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("find repo root: %w", err)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find repo root: no go.mod above the working directory")
		}
		dir = parent
	}
}
