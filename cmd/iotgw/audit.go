package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/audit"
	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/storage"
	"github.com/iotgw/iotgw/pkg/validate"
)

func init() { commands = append(commands, newAuditCmd) }

// recordCmd is recordAdminIn on the store of cmd (storeOf).
func recordCmd(cmd *cobra.Command, action, device string, count int) error {
	s, err := storeOf(cmd)
	if err != nil {
		return fmt.Errorf("%s done, but not recorded in the audit trail: %w", action, err)
	}
	return recordAdminIn(cmd.Context(), s, action, device, count)
}

// recordAdminIn appends one admin action (e.g. "device.add") by the
// current user to the audit trail of s. It is the one call each admin
// command makes after its change succeeded; count is how many objects it
// concerned (0 means 1).
func recordAdminIn(ctx context.Context, s store, action, device string, count int) error {
	l, closeLog, err := storage.OpenAudit(ctx, s.cfg, s.path, time.Now)
	if err != nil {
		return fmt.Errorf("%s done, but not recorded in the audit trail: %w", action, err)
	}
	defer closeLog() //nolint:errcheck // committed already
	if err := l.Append(ctx, &audit.Entry{Actor: cliActor(), Device: device, Action: action, Count: int64(count)}); err != nil {
		return fmt.Errorf("%s done, but not recorded in the audit trail: %w", action, err)
	}
	return nil
}

// cliActor is "cli:<user>", naming the sudo user too when there is one.
func cliActor() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if name == "" {
		name = fmt.Sprintf("uid%d", os.Getuid())
	}
	if s := os.Getenv("SUDO_USER"); s != "" && s != name {
		name += "(sudo:" + s + ")"
	}
	return "cli:" + name
}

func newAuditCmd() *cobra.Command {
	var dbPath, cfgPath string
	var anchors []string
	// open returns the audit trail of --db, or of the storage section
	// and registry.path from --config and the environment, and its closer.
	open := func(cmd *cobra.Command) (*audit.Log, func() error, error) {
		f, err := config.LoadUnvalidated(cfgPath)
		if err != nil {
			return nil, nil, err
		}
		if err := f.Storage.Validate(); err != nil {
			return nil, nil, err
		}
		p := dbPath
		if p == "" {
			p = f.Registry.Path
		} else if err := f.Storage.FileUnused("--db"); err != nil {
			return nil, nil, usagef("%v", err)
		}
		if err := f.Storage.RegistryExists(p); err != nil {
			return nil, nil, err
		}
		return storage.OpenAudit(cmd.Context(), f.Storage, p, time.Now)
	}
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify or show the audit trail (admin actions and rejections)",
		Long: `The audit trail is a hash chain in the registry database (tables audit_*):
every admin action (device add, rotate, disable, enable, revoke, remove,
kek rotate, deadletter retry and drop) and every rejection by the gateway,
repeated rejections folded into one entry per device, reason and second.
The database is --db, else registry.path from --config or
IOTGW_REGISTRY_PATH, else iotgw.db; with storage.engine postgres (from
--config or IOTGW_STORAGE_ENGINE and IOTGW_STORAGE_DSN) it is the shared
PostgreSQL database.

'verify' exits 1 naming the first broken entry if a row was edited,
inserted or deleted. Someone who can write the file can still rewrite the
whole chain consistently; keep the head that verify prints (SEQ:HASH)
elsewhere and pass it later as --anchor to catch that.`,
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	cmd.PersistentFlags().StringVar(&dbPath, "db", "", "registry SQLite file holding the audit trail")
	cmd.PersistentFlags().StringVar(&cfgPath, "config", "", "YAML config file (for storage and registry.path)")

	verify := &cobra.Command{Use: "verify", Short: "Check the whole chain; exit 1 naming the first broken entry", Args: noArguments,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, closeLog, err := open(cmd)
			if err != nil {
				return err
			}
			defer closeLog() //nolint:errcheck // read only
			n, err := l.Verify(cmd.Context())
			var be *audit.BrokenError
			if errors.As(err, &be) {
				return fmt.Errorf("audit chain BROKEN at entry %d: %s", be.Seq, be.Reason)
			}
			if err != nil {
				return err
			}
			for _, a := range anchors {
				seq, hash, err := audit.ParseAnchor(a)
				if err != nil {
					return usagef("--anchor: %v", err)
				}
				if err := l.CheckAnchor(cmd.Context(), seq, hash); err != nil {
					return fmt.Errorf("audit chain BROKEN at entry %d: %w", seq, err)
				}
			}
			head := "none"
			if tail, err := l.Tail(cmd.Context(), 1); err == nil && len(tail) == 1 {
				head = fmt.Sprintf("%d:%s", tail[0].Seq, hex.EncodeToString(tail[0].Hash[:]))
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "audit chain ok: %d entries; head %s (keep it elsewhere; --anchor checks it later)\n", n, head)
			return err
		}}
	verify.Flags().StringArrayVar(&anchors, "anchor", nil, "SEQ:HASH printed by an earlier verify and kept elsewhere: the entry must still be there (repeatable)")
	var n int
	var filter audit.Filter
	var since time.Duration
	tail := &cobra.Command{Use: "tail", Short: "Print the newest entries, of one device or reason if asked", Args: noArguments,
		Example: `  iotgw audit tail -n 50
  iotgw audit tail --device sensor_042 --reason bad_signature --since 1h`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n < 1 {
				return usagef("-n must be at least 1")
			}
			if since < 0 {
				return usagef("--since must not be negative")
			}
			if filter.Reason != "" && !knownReason(filter.Reason) {
				return usagef("--reason %q is not a reason code (%s)", filter.Reason, reasonList())
			}
			f := filter
			if since > 0 {
				f.Since = time.Now().Add(-since)
			}
			l, closeLog, err := open(cmd)
			if err != nil {
				return err
			}
			defer closeLog() //nolint:errcheck // read only
			entries, err := l.Find(cmd.Context(), f, n)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SEQ\tTIME\tACTOR\tDEVICE\tACTION\tREASON\tCOUNT\tMESSAGE_ID\tHASH")
			for _, e := range entries {
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.Seq, e.At.Format("2006-01-02T15:04:05.000Z"), e.Actor,
					dash(e.Device), e.Action, dash(e.Reason), e.Count, dash(e.MessageID), hex.EncodeToString(e.Hash[:6]))
			}
			return w.Flush()
		}}
	tail.Flags().IntVarP(&n, "lines", "n", 20, "how many entries")
	tail.Flags().StringVar(&filter.Device, "device", "", "only entries about this device")
	tail.Flags().StringVar(&filter.Reason, "reason", "", "only entries with this reason code (e.g. bad_signature)")
	tail.Flags().DurationVar(&since, "since", 0, "only entries this recent (e.g. 1h; 0: all)")
	cmd.AddCommand(verify, tail)
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// knownReason reports whether r is a rejection reason code.
func knownReason(r string) bool {
	for _, x := range validate.Reasons {
		if string(x) == r {
			return true
		}
	}
	return false
}

// reasonList is the reason codes, comma-separated.
func reasonList() string {
	var b strings.Builder
	for i, r := range validate.Reasons {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(r))
	}
	return b.String()
}

// rateLimitedRecently is how recent a rate_limited rejection must be for
// device show to call the device rate-limited now.
const rateLimitedRecently = time.Minute

// printActivity prints what the audit trail says of device id over the
// last window (device show): the last rejection, rejections by reason,
// quarantine and rate limiting. On PostgreSQL the trail is the whole
// fleet's. Accepted messages are not in the trail.
func printActivity(cmd *cobra.Command, w io.Writer, id string, info registry.Info, window time.Duration) error {
	s, err := storeOf(cmd)
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	l, closeLog, err := storage.OpenAudit(ctx, s.cfg, s.path, time.Now)
	if err != nil {
		return err
	}
	defer closeLog() //nolint:errcheck // read only
	now := time.Now()
	from := now.Add(-window)
	tallies, err := l.Summarize(ctx, audit.Filter{Device: id, Since: from})
	if err != nil {
		return err
	}
	scope := "every gateway sharing storage.dsn"
	if s.cfg.FilesLocal() {
		scope = "this registry"
	}
	fmt.Fprintf(w, "activity: audit trail of %s since %s (--since %s)\n", scope, from.UTC().Format(time.RFC3339), window)
	switch last, err := storage.LastAccepted(ctx, s.cfg, s.outbox, id); {
	case err != nil:
		fmt.Fprintf(w, "  last accepted:  unknown (%v)\n", err)
	case last.IsZero():
		fmt.Fprintln(w, "  last accepted:  none on record (the outbox keeps ids for the replay window, validation.max_clock_skew, and rows until forwarded)")
	default:
		fmt.Fprintf(w, "  last accepted:  %s\n", last.UTC().Format(time.RFC3339))
	}
	var rejected []string
	var lastRej, lastRate, lastQuarantine, lastEnable audit.Tally
	var total int64
	for _, t := range tallies { // most recent first
		switch t.Action {
		case "reject":
			total += t.Count
			rejected = append(rejected, fmt.Sprintf("%s %d", t.Reason, t.Count))
			if lastRej.Last.IsZero() {
				lastRej = t
			}
			if t.Reason == string(validate.RateLimited) {
				lastRate = t
			}
		case "quarantine":
			if lastQuarantine.Last.IsZero() {
				lastQuarantine = t
			}
		case "device.enable":
			if lastEnable.Last.IsZero() {
				lastEnable = t
			}
		}
	}
	if total == 0 {
		fmt.Fprintln(w, "  rejections:     none")
	} else {
		fmt.Fprintf(w, "  rejections:     %d (%s)\n", total, strings.Join(rejected, ", "))
		fmt.Fprintf(w, "  last rejection: %s %s\n", lastRej.Last.Format(time.RFC3339), lastRej.Reason)
	}
	switch {
	case lastRate.Last.IsZero():
		fmt.Fprintln(w, "  rate-limited:   no")
	case now.Sub(lastRate.Last) <= rateLimitedRecently:
		fmt.Fprintf(w, "  rate-limited:   yes (last %s)\n", lastRate.Last.Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "  rate-limited:   not now (last %s)\n", lastRate.Last.Format(time.RFC3339))
	}
	switch {
	case lastQuarantine.Last.IsZero():
		fmt.Fprintln(w, "  quarantined:    no")
	case !info.Enabled && lastQuarantine.Last.After(lastEnable.Last):
		fmt.Fprintf(w, "  quarantined:    yes, since %s (iotgw device enable re-enables it)\n", lastQuarantine.Last.Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "  quarantined:    not now (last %s)\n", lastQuarantine.Last.Format(time.RFC3339))
	}
	return nil
}
