package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// buildDirPrefix names the temporary directories BuildIotgw builds into.
const buildDirPrefix = "iotgw-harness-bin-"

// staleBuild is the age after which BuildIotgw removes the build
// directories of earlier test binaries (a test binary cannot remove its
// own when it exits without a TestMain).
const staleBuild = 6 * time.Hour

var build struct {
	once sync.Once
	path string
	err  error
}

// BuildIotgw builds ./cmd/iotgw once per test binary, into a temporary
// directory, and returns the binary's path. When the test binary was built
// with -race, so is iotgw. It fails the test if the build fails, showing
// the compiler's output.
func BuildIotgw(t testing.TB) string {
	t.Helper()
	build.once.Do(func() { build.path, build.err = buildIotgw() })
	if build.err != nil {
		t.Fatalf("harness: %v", build.err)
	}
	return build.path
}

func buildIotgw() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	removeStaleBuilds()
	dir, err := os.MkdirTemp("", buildDirPrefix)
	if err != nil {
		return "", fmt.Errorf("build iotgw: %w", err)
	}
	bin := filepath.Join(dir, "iotgw")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/iotgw")
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build iotgw: %w", err)
	}
	cmd := exec.Command(goBin, args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build iotgw: go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}

// removeStaleBuilds removes build directories older than staleBuild.
func removeStaleBuilds() {
	old, _ := filepath.Glob(filepath.Join(os.TempDir(), buildDirPrefix+"*"))
	for _, d := range old {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > staleBuild {
			os.RemoveAll(d)
		}
	}
}
