package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/gateway"
	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/procs"
)

func init() { commands = append(commands, newServeCmd) }

func newServeCmd() *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway: MQTT (mTLS) → validate → outbox → HTTP backend → signed reply",
		Long: `serve subscribes to device/+/data on the broker, validates every message
(shape, identity, freshness, HMAC signature, replay), stores accepted ones
durably, forwards them to backend.url and publishes a signed reply to
device/<id>/response. It also answers time requests on device/+/time with
the gateway's time, signed (docs/PROTOCOL.md, section 4c).

Configuration comes from --config (YAML) and IOTGW_<SECTION>_<KEY>
environment variables, e.g. IOTGW_BACKEND_URL. See examples/iotgw.yaml.
SIGINT/SIGTERM drain in-flight work within shutdown_grace and exit 0.
Without its broker connections for mqtt.max_disconnected (default 5m; 0:
never) it drains the same way and exits 1, for the supervisor to restart
it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			log, err := cfg.Log.Logger()
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck
			ctx, cancel := context.WithCancelCause(cmd.Context())
			defer cancel(nil)
			g, err := gateway.New(ctx, cfg.Config, log, time.Now)
			if err != nil {
				return err
			}
			if cfg.Pipeline.AdaptiveProcs {
				go procs.Run(ctx, procs.DefaultConfig(), log.With(zap.String("component", "procs")), g.Backlog)
			}
			if a := g.HTTPAddr(); a != "" {
				log.Info("operations endpoint", zap.String("addr", a))
			}
			// Without a broker for mqtt.max_disconnected, drain and exit
			// non-zero: the supervisor's restart policy recovers the gateway.
			go func() {
				if err := g.WatchBroker(ctx); err != nil {
					cancel(err)
				}
			}()
			if err := g.Run(ctx); err != nil {
				return err
			}
			if cause := context.Cause(ctx); errors.Is(cause, mqttio.ErrBrokerLost) {
				return cause
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "YAML config file")
	return cmd
}
