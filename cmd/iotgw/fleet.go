package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/storage"
)

func init() { commands = append(commands, newFleetCmd) }

func newFleetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Settings shared by every gateway of one database",
	}
	var cfgPath string
	set := &cobra.Command{
		Use:   "set-skew DURATION",
		Short: "Change the fleet's freshness window (validation.max_clock_skew of every gateway)",
		Long: `Gateways sharing one database (storage.engine postgres) prune replay ids by
one freshness window, kept in the database: a gateway whose
validation.max_clock_skew differs refuses to start. To change it:
  1. iotgw fleet set-skew 10m --config gateway.yaml
  2. set validation.max_clock_skew: 10m in each gateway's config, and restart
     them one at a time (running gateways go on; a restarted one with the
     old value refuses to start and says so).
Replays stay refused across the change: ids are pruned by the new window
from the next prune on, and a message older than what was pruned is
refused by the database.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("set-skew takes one duration, e.g. 5m")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := time.ParseDuration(args[0])
			if err != nil || d < time.Second || d > 24*time.Hour {
				return usagef("set-skew %q: a duration of 1s..24h, e.g. 5m", args[0])
			}
			f, err := config.LoadUnvalidated(cfgPath)
			if err != nil {
				return err
			}
			if err := f.Storage.Validate(); err != nil {
				return err
			}
			old, err := storage.SetFreshnessWindow(cmd.Context(), f.Storage, d)
			if err != nil {
				return err
			}
			if old == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "fleet freshness window set to %s\n", d)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "fleet freshness window %s → %s; now set validation.max_clock_skew: %s in every gateway's config\n", old, d, d)
			}
			return nil
		},
	}
	set.Flags().StringVar(&cfgPath, "config", "", "YAML config file (storage.engine, storage.dsn)")
	cmd.AddCommand(set)
	return cmd
}
