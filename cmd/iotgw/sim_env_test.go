package main

import (
	"strings"
	"testing"
)

// TestSimNamesAMistypedEnvVariable: sim reads the shared registry's
// settings from IOTGW_STORAGE_* when given neither --db nor
// --secrets-file; a mistyped IOTGW_* variable is named, with the nearest
// key, instead of being swallowed into "give exactly one of --db and
// --secrets-file".
func TestSimNamesAMistypedEnvVariable(t *testing.T) {
	t.Setenv("IOTGW_STORAGE_ENGNE", "postgres")
	r := runCLI(t, "", "sim", "load", "--broker", "ssl://127.0.0.1:1", "--certs", t.TempDir())
	if r.code != 2 || r.err == nil || !strings.Contains(r.err.Error(), "IOTGW_STORAGE_ENGNE") || !strings.Contains(r.err.Error(), "IOTGW_STORAGE_ENGINE") {
		t.Fatalf("exit %d: %v, want 2 naming IOTGW_STORAGE_ENGNE and IOTGW_STORAGE_ENGINE", r.code, r.err)
	}
}
