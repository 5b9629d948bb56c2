package secretfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		mode    os.FileMode
		wantErr error
	}{
		{"owner only", 0o600, nil},
		{"owner read only", 0o400, nil},
		{"group readable", 0o640, ErrTooOpen},
		{"world readable", 0o604, ErrTooOpen},
		{"group writable", 0o620, ErrTooOpen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(p, []byte("s3cret"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tc.mode); err != nil {
				t.Fatal(err)
			}
			b, err := Read(p)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Read: err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && string(b) != "s3cret" {
				t.Fatalf("Read = %q", b)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error leaks the contents: %v", err)
			}
			if cerr := Check(p); !errors.Is(cerr, tc.wantErr) {
				t.Fatalf("Check: err = %v, want %v", cerr, tc.wantErr)
			}
		})
	}
	if _, err := Read(dir); err == nil {
		t.Fatal("Read(directory) succeeded")
	}
	if _, err := Read(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read(missing) = %v", err)
	}
}
