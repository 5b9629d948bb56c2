package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/storage"
)

func init() { commands = append(commands, newMigrateCmd) }

func newMigrateCmd() *cobra.Command {
	var cfgPath, from, to string
	cmd := &cobra.Command{
		Use:   "migrate [--config FILE] [--from sqlite --to postgres]",
		Short: "Apply the storage schema, or copy a SQLite gateway into PostgreSQL",
		Long: `migrate applies the schema of storage.engine: on postgres it migrates the
database of storage.dsn (as every gateway does at start, under an advisory
lock) and prints the version; SQLite files migrate themselves when opened,
so on sqlite it opens registry.path and outbox.path to bring them up to date.

migrate --from sqlite --to postgres copies one gateway's SQLite files
(registry.path: devices, keys still sealed, the KEK fingerprint and the
audit chain; outbox.path: pending rows, dead letters and the replay ids)
into the empty PostgreSQL database of storage.dsn, in one transaction.
Stop the gateway first: the copy takes the outbox lock and refuses while a
gateway holds it. The SQLite files are read, never written; keep them until
the gateways on postgres have forwarded the copied rows.

Settings come from --config and the IOTGW_* environment.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("migrate takes no arguments, got %q (settings come from --config)", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := config.LoadUnvalidated(cfgPath)
			if err != nil {
				return err
			}
			switch {
			case from == "" && to == "":
				return migrateSchema(cmd.Context(), cmd.OutOrStdout(), f)
			case from == "" || to == "":
				return usagef("--from and --to go together: iotgw migrate --from sqlite --to postgres")
			}
			if err := storage.CheckMigration(from, to); err != nil {
				return usagef("%v", err)
			}
			return migrateCopy(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	cmd.Flags().StringVar(&cfgPath, "config", "", "YAML config file (storage, registry.path, outbox.path)")
	cmd.Flags().StringVar(&from, "from", "", "copy from this engine: sqlite (registry.path, outbox.path)")
	cmd.Flags().StringVar(&to, "to", "", "copy into this engine: postgres (storage.dsn, an empty database)")
	return cmd
}

// migrateSchema brings the configured engine's schema up to date.
func migrateSchema(ctx context.Context, out io.Writer, f config.File) error {
	if err := f.Storage.Validate(); err != nil {
		return err
	}
	lines, err := storage.SchemaStatus(ctx, f.Storage, f.Registry.Path, f.Outbox.Path)
	if err != nil {
		return dsnErr(err)
	}
	for _, l := range lines {
		fmt.Fprintln(out, l)
	}
	return nil
}

// migrateCopy copies the SQLite files of f into the PostgreSQL database of
// storage.dsn and prints what it copied.
func migrateCopy(ctx context.Context, out io.Writer, f config.File) error {
	n, err := storage.CopyToShared(ctx, f.Storage, f.Registry.Path, f.Outbox.Path)
	if err != nil {
		return dsnErr(err)
	}
	applied := n.Schema
	fmt.Fprintf(out, "copied registry.path %s and outbox.path %s into PostgreSQL (schema version %d):\n", f.Registry.Path, f.Outbox.Path, applied)
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	for _, row := range []struct {
		table string
		n     int64
		note  string
	}{
		{"devices", n.Devices, ""},
		{"device_keys", n.DeviceKeys, "secrets as stored (sealed stays sealed)"},
		{"registry_meta", n.RegistryMeta, ""},
		{"audit_log", n.AuditLog, ""},
		{"audit_head", n.AuditHead, ""},
		{"outbox", n.Outbox, fmt.Sprintf("pending rows of %d device(s)", n.OutboxDevices)},
		{"deadletter", n.DeadLetters, ""},
		{"seen", n.Seen, "replay ids"},
		{"seen_horizon", n.SeenHorizon, ""},
		{"counter_bound", n.CounterBounds, "counter-mode devices' highest accepted counters"},
	} {
		if row.note == "" {
			fmt.Fprintf(w, "  %s\t%d\n", row.table, row.n)
			continue
		}
		fmt.Fprintf(w, "  %s\t%d\t%s\n", row.table, row.n, row.note)
	}
	w.Flush()
	fmt.Fprintln(out, "next: start the gateways with storage.engine postgres; keep the SQLite files until the copied rows are forwarded")
	return nil
}

// dsnErr is err on one line, naming storage.dsn (never its value) when
// it is the database's: connecting, migrating, copying.
func dsnErr(err error) error {
	msg := strings.TrimPrefix(oneLineErr(err), "storage: ")
	if strings.HasPrefix(msg, "postgres") || strings.HasPrefix(msg, "migration") {
		msg = "storage.dsn: " + msg
	}
	return errors.New(msg)
}

// oneLineErr is err's text on one line.
func oneLineErr(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}
