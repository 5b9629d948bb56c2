package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/config"
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
runs serve's configuration checks (keys, values, the TLS and secret files).
It does not open the registry or the outbox, nor connect anywhere.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("config check FILE: give the one configuration file to check, e.g. iotgw config check /etc/iotgw/iotgw.yaml (got %d arguments)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := config.Load(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", args[0])
			return nil
		},
	})
	return cmd
}
