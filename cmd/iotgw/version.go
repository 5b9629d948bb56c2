package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func init() { commands = append(commands, newVersionCmd) }

// Stamped by `make build` and `make release`:
//
//	-ldflags "-X main.version=$(git describe --tags --always --dirty) -X main.commit=$(git rev-parse HEAD)"
//
// Left empty, buildVersion falls back to the Go toolchain's VCS stamp
// (debug.ReadBuildInfo), then to "devel" and "unknown".
var (
	version string
	commit  string
)

// versionInfo is what `iotgw version` prints.
type versionInfo struct {
	Version  string // a git describe string, a module version, or "devel"
	Commit   string // a full commit hash (with "-dirty" if modified), or "unknown"
	Go       string // runtime.Version()
	Platform string // GOOS/GOARCH
}

// buildVersion resolves the version from the ldflags stamps first, then
// from bi (the toolchain's build info; nil when there is none).
func buildVersion(stampVersion, stampCommit string, bi *debug.BuildInfo) versionInfo {
	v := versionInfo{
		Version:  stampVersion,
		Commit:   stampCommit,
		Go:       runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH,
	}
	if bi != nil {
		if v.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v.Version = bi.Main.Version
		}
		if v.Commit == "" {
			var rev string
			var modified bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					modified = s.Value == "true"
				}
			}
			if rev != "" {
				v.Commit = rev
				if modified {
					v.Commit += "-dirty"
				}
			}
		}
		if bi.GoVersion != "" {
			v.Go = bi.GoVersion
		}
	}
	if v.Version == "" {
		v.Version = "devel"
	}
	if v.Commit == "" {
		v.Commit = "unknown"
	}
	return v
}

// currentVersion is buildVersion for the running binary.
func currentVersion() versionInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return buildVersion(version, commit, bi)
}

// String is the three lines `iotgw version` prints.
func (v versionInfo) String() string {
	return fmt.Sprintf("iotgw %s\ncommit: %s\ngo: %s %s\n", v.Version, v.Commit, v.Go, v.Platform)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, the commit and the Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := io.WriteString(cmd.OutOrStdout(), currentVersion().String())
			return err
		},
	}
}

// setVersionFlag gives root a --version flag printing the same text.
func setVersionFlag(root *cobra.Command) {
	v := currentVersion()
	root.Version = v.Version
	// The template is literal text: a git describe string holds no "{{".
	root.SetVersionTemplate(v.String())
}
