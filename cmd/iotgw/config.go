package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/gateway"
)

func init() { commands = append(commands, newConfigCmd) }

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Print the default configuration, or check a configuration file",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "print-defaults",
		Short: "Print every key with its default, as YAML",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(config.DefaultsYAML())
			return err
		},
	}, &cobra.Command{
		Use:   "check FILE",
		Short: "Validate FILE and the IOTGW_* environment as serve would, without starting",
		Long: `check loads FILE and the IOTGW_<SECTION>_<KEY> environment variables and
runs every start-up check of serve that needs neither the broker nor the
backend, with serve's error for the first that fails: keys, values and
their ranges (docs/CONFIG.md), the TLS files and the gateway certificate's
identity, secret file modes, the KEK files (security.kek_file and
previous_kek_file), the registry (it exists, is sealed under the KEK held,
and every secret opens), PostgreSQL reachable (storage.engine postgres),
the outbox's directory. It opens the registry as serve does (applying
pending migrations), but creates no registry or outbox, binds no port and
connects to neither the broker nor the backend.`,
		Example: `  iotgw config check /etc/iotgw/iotgw.yaml`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("config check FILE: give the one configuration file to check, e.g. iotgw config check /etc/iotgw/iotgw.yaml (got %d arguments)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := config.Load(args[0])
			if err != nil {
				return err
			}
			if err := gateway.Preflight(cmd.Context(), f.Config); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", args[0])
			return nil
		},
	})
	return cmd
}
