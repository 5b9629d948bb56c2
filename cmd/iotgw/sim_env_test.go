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

func TestLoadIDs(t *testing.T) {
	tests := []struct {
		name    string
		o       loadOptions
		want    string
		wantErr string
	}{
		{"count", loadOptions{devices: 3, idPrefix: "sim-"}, "sim-1,sim-2,sim-3", ""},
		{"list", loadOptions{deviceIDs: "a, b,,c"}, "a,b,c", ""},
		{"both", loadOptions{devices: 1, deviceIDs: "a"}, "", "exactly one"},
		{"neither", loadOptions{}, "", "exactly one"},
		{"duplicate", loadOptions{deviceIDs: "a,a"}, "", "given twice"},
		{"bad prefix", loadOptions{devices: 2, idPrefix: "a/"}, "", "not a device id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ids, err := tc.o.ids()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(ids, ","); got != tc.want {
				t.Errorf("ids = %s, want %s", got, tc.want)
			}
		})
	}
}
