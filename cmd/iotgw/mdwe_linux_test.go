package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// deploy/iotgw.service sets MemoryDenyWriteExecute=true. The kernel's
// PR_SET_MDWE (Linux 6.3+) enforces the same rule (no mapping both writable
// and executable, no mprotect adding exec), is inherited across exec, and
// needs no systemd: these tests run the built binary, cgo SQLite included,
// under it.
const (
	prSetMDWE             = 65
	prMDWERefuseExecGain  = 1
	mdweHelperEnv         = "MDWE_TEST_HELPER" // not IOTGW_*: the gateway refuses unknown IOTGW_ variables
	mdweHelperProbe       = "probe"
	mdweHelperExecPrefix  = "exec:"
	mdweHelperUnsupported = 3
)

// TestMain lets the test binary act as the helper that turns MDWE on for
// itself and then becomes the process under test.
func TestMain(m *testing.M) {
	if mode := os.Getenv(mdweHelperEnv); mode != "" {
		os.Exit(mdweHelper(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

func mdweHelper(mode string, args []string) int {
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetMDWE, prMDWERefuseExecGain, 0, 0, 0, 0); e != 0 {
		os.Stderr.WriteString("mdwe unsupported: " + e.Error() + "\n")
		return mdweHelperUnsupported
	}
	if mode == mdweHelperProbe {
		// A writable+executable mapping must now be refused.
		b, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE|syscall.PROT_EXEC, syscall.MAP_PRIVATE|syscall.MAP_ANON)
		if err == nil {
			_ = syscall.Munmap(b)
			os.Stderr.WriteString("W+X mmap allowed under MDWE\n")
			return 1
		}
		return 0
	}
	bin := strings.TrimPrefix(mode, mdweHelperExecPrefix)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, mdweHelperEnv+"=") {
			env = append(env, kv)
		}
	}
	err := syscall.Exec(bin, append([]string{bin}, args...), env)
	os.Stderr.WriteString("exec: " + err.Error() + "\n")
	return 1
}

// underMDWE runs the test binary as the helper in mode; it skips when the
// kernel lacks PR_SET_MDWE.
func underMDWE(t *testing.T, mode string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mdweHelperEnv+"="+mode)
	out, err := cmd.CombinedOutput()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && ee.ExitCode() == mdweHelperUnsupported {
		t.Skipf("kernel without PR_SET_MDWE: %s", out)
	}
	return string(out), err
}

// The control: the helper really does deny W+X memory.
func TestMDWEHelperDeniesWriteExecute(t *testing.T) {
	if out, err := underMDWE(t, mdweHelperProbe); err != nil {
		t.Fatalf("probe: %v\n%s", err, out)
	}
}

// The gateway binary (Go runtime, cgo SQLite, crypto) works with
// MemoryDenyWriteExecute: register a device and list it.
func TestBinaryRunsUnderMemoryDenyWriteExecute(t *testing.T) {
	bin := buildIotgw(t)
	db := filepath.Join(t.TempDir(), "reg.db")
	if out, err := underMDWE(t, mdweHelperExecPrefix+bin, "device", "add", "mdwe_1", "--db", db); err != nil {
		t.Fatalf("device add under MDWE: %v\n%s", err, out)
	}
	out, err := underMDWE(t, mdweHelperExecPrefix+bin, "device", "list", "--db", db)
	if err != nil || !strings.Contains(out, "mdwe_1") {
		t.Fatalf("device list under MDWE: %v\n%s", err, out)
	}
	if out, err := underMDWE(t, mdweHelperExecPrefix+bin, "version"); err != nil || !strings.HasPrefix(out, "iotgw ") {
		t.Fatalf("version under MDWE: %v\n%s", err, out)
	}
}
