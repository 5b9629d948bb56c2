package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/audit"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/storage"
)

// Counter mode (docs/PROTOCOL.md, section 2a): a device's freshness mode
// lives in the registry, its counter's bound in the outbox (raised in the
// commit that stores each message).

func init() {
	deviceSubcommands = append(deviceSubcommands, newDeviceSetFreshnessCmd, newDeviceResetCounterCmd)
}

// recordCmdReason is recordCmd with a reason (the new mode, the old bound).
func recordCmdReason(cmd *cobra.Command, action, device, reason string) error {
	s, err := storeOf(cmd)
	if err != nil {
		return fmt.Errorf("%s done, but not recorded in the audit trail: %w", action, err)
	}
	ctx := cmd.Context()
	l, closeLog, err := storage.OpenAudit(ctx, s.cfg, s.path, time.Now)
	if err != nil {
		return fmt.Errorf("%s done, but not recorded in the audit trail: %w", action, err)
	}
	defer closeLog() //nolint:errcheck // committed already
	if err := l.Append(ctx, &audit.Entry{Actor: cliActor(), Device: device, Action: action, Reason: reason, Count: 1}); err != nil {
		return fmt.Errorf("%s done, but not recorded in the audit trail: %w", action, err)
	}
	return nil
}

// outboxFlag adds --outbox (the SQLite outbox file holding the counter
// bounds) and returns a function applying it to a store.
func outboxFlag(cmd *cobra.Command) func(*store) {
	path := cmd.Flags().String("outbox", "", "SQLite outbox file holding the counter bounds (default outbox.path from --config)")
	return func(s *store) {
		if *path != "" {
			s.outbox.Path = *path
		}
	}
}

// printFreshness prints a device's freshness mode and, in counter mode,
// its bound.
func printFreshness(cmd *cobra.Command, out io.Writer, d registry.Info) {
	if d.Freshness != registry.FreshnessCounter {
		fmt.Fprintf(out, "freshness: %s\n", d.Freshness)
		return
	}
	s, err := storeOf(cmd)
	if err == nil {
		if f := cmd.Flags().Lookup("outbox"); f != nil && f.Value.String() != "" {
			s.outbox.Path = f.Value.String()
		}
		var b int64
		if b, err = storage.CounterBound(cmd.Context(), s.cfg, s.outbox, d.ID); err == nil {
			fmt.Fprintf(out, "freshness: counter (highest accepted: %d; the next message needs a counter above it)\n", b)
			return
		}
	}
	fmt.Fprintf(out, "freshness: counter (highest accepted: unknown: %v)\n", err)
}

func newDeviceSetFreshnessCmd() *cobra.Command {
	var apply func(*store)
	cmd := &cobra.Command{
		Use:   "set-freshness ID timestamp|counter",
		Short: "Switch a device between timestamp and counter freshness",
		Long: `set-freshness changes how a device proves that a message is new
(docs/PROTOCOL.md, section 2a). From then on the gateway accepts only
messages of the new mode from it: a device switched to counter mode cannot
replay its timestamp-mode messages (they are "malformed"), and the other
way round. A counter-mode device's bound is kept across switches, so
switching back to counters later reopens no counter. A running gateway
applies the change within registry.refresh. Audited as
device.set_freshness.`,
		Example: `  iotgw device set-freshness meter_001 counter
  iotgw device set-freshness meter_001 timestamp`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("set-freshness takes a device id and a mode (timestamp or counter), got %d arguments", len(args))
			}
			return deviceIDArg(cmd, args[:1])
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			mode, err := registry.CheckFreshness(args[1])
			if err != nil || args[1] == "" {
				return usagef("mode must be timestamp or counter, not %q", args[1])
			}
			err = withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				return r.SetFreshness(ctx, id, mode)
			})
			if err != nil {
				return err
			}
			auditErr := recordCmdReason(cmd, "device.set_freshness", id, mode)
			msg := fmt.Sprintf("device %s now uses %s freshness", id, mode)
			if mode == registry.FreshnessCounter {
				s, err := storeOf(cmd)
				if err == nil {
					apply(&s)
					if b, err := storage.CounterBound(cmd.Context(), s.cfg, s.outbox, id); err == nil {
						msg += fmt.Sprintf("; its next message needs a counter above %d", b)
					}
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), msg)
			return auditErr
		},
	}
	apply = outboxFlag(cmd)
	return cmd
}

func newDeviceResetCounterCmd() *cobra.Command {
	var (
		fromStdin bool
		apply     func(*store)
	)
	cmd := &cobra.Command{
		Use:   "reset-counter ID",
		Short: "Set a counter-mode device's bound back to 0, with a new secret",
		Long: `reset-counter is for a counter-mode device that lost its counter (flash
wiped, board replaced): it sets the device's bound (the highest counter
accepted) back to 0, so that counters from 1 are accepted again, and in
the same step gives the device a new secret, ending its old ones at once.
The new secret is the point: with the old one, every message the device
ever sent would be accepted again from counter 1. There is no reset that
keeps the secret.

The new secret is printed once on stdout (or read from the first line of
stdin with --secret-stdin). The secret is rotated first: if resetting the
bound then fails, the device has its new secret and a bound it cannot
reach yet (it is refused, never replayed): run the command again.
Audited as device.reset_counter, with the old bound.

On SQLite the bound is in the outbox file (--outbox, else outbox.path
from --config), which this command opens beside a running gateway.`,
		Example: `  NEW=$(iotgw device reset-counter meter_001 --config /etc/iotgw/iotgw.yaml)`,
		Args:    deviceIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			s, err := storeOf(cmd)
			if err != nil {
				return err
			}
			apply(&s)
			secret, err := newOrStdinSecret(cmd, fromStdin)
			if err != nil {
				return err
			}
			var k registry.KeyInfo
			err = withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				d, err := r.Get(ctx, id)
				if err != nil {
					return err
				}
				if d.Freshness != registry.FreshnessCounter {
					return fmt.Errorf("device %s uses %s freshness: it has no counter to reset (iotgw device set-freshness %s counter)", id, d.Freshness, id)
				}
				warnUnsealed(cmd, r)
				k, err = r.Rotate(ctx, id, secret, 0)
				return err
			})
			if err != nil {
				return err
			}
			old, resetErr := storage.ResetCounter(cmd.Context(), s.cfg, s.outbox, id, k.ID)
			reason := fmt.Sprintf("bound %d reset to 0; new secret (key %d)", old, k.ID)
			if resetErr != nil {
				reason = fmt.Sprintf("new secret (key %d); bound NOT reset: %v", k.ID, resetErr)
			}
			auditErr := recordCmdReason(cmd, "device.reset_counter", id, reason)
			if resetErr != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "device %s has a new secret (key %d; its old keys ended), but its counter bound was not reset: run reset-counter again\n", id, k.ID)
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(), "reset device %s: highest accepted counter %d → 0; new secret (key %d), older keys ended\n", id, old, k.ID)
			}
			if !fromStdin {
				fmt.Fprintln(cmd.OutOrStdout(), secret)
			}
			return errors.Join(resetErr, auditErr)
		},
	}
	cmd.Flags().BoolVar(&fromStdin, "secret-stdin", false, "read the new secret from the first line of stdin instead of generating one")
	apply = outboxFlag(cmd)
	return cmd
}
