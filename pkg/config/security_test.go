package config_test

import (
	"strings"
	"testing"

	"github.com/iotgw/iotgw/pkg/config"
)

// TestSecurityKeys checks the security section's keys and env variables.
func TestSecurityKeys(t *testing.T) {
	base := validEnv(t)
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
		wantKEK string
	}{
		{name: "no kek is allowed", env: map[string]string{}},
		{name: "kek file from env", env: map[string]string{"IOTGW_SECURITY_KEK_FILE": "/etc/iotgw/kek"}, wantKEK: "/etc/iotgw/kek"},
		{name: "require_kek without kek_file", env: map[string]string{"IOTGW_SECURITY_REQUIRE_KEK": "true"}, wantErr: "security.require_kek"},
		{name: "require_kek with kek_file", env: map[string]string{"IOTGW_SECURITY_REQUIRE_KEK": "true", "IOTGW_SECURITY_KEK_FILE": "/k"}, wantKEK: "/k"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			setEnv(t, base)
			setEnv(t, tc.env)
			f, err := config.Load("")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Load: %v, want an error naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if f.Security.KEKFile != tc.wantKEK {
				t.Errorf("security.kek_file = %q, want %q", f.Security.KEKFile, tc.wantKEK)
			}
		})
	}
}
