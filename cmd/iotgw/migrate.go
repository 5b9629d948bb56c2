package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/audit"
	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pgstore"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/sqlitestore"
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
			case from != storage.SQLite:
				return usagef("--from: %q is not an engine migrate copies from (valid: %s)", from, storage.SQLite)
			case to != storage.Postgres:
				return usagef("--to: %q is not an engine migrate copies to (valid: %s)", to, storage.Postgres)
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
	if f.Storage.Engine == storage.Postgres {
		db, err := openPostgres(ctx, f.Storage.DSN)
		if err != nil {
			return err
		}
		defer db.Close()
		applied, latest, err := db.Version(ctx)
		if err != nil {
			return fmt.Errorf("storage.dsn: schema version: %s", oneLineErr(err))
		}
		fmt.Fprintf(out, "schema version %d (latest %d)\n", applied, latest)
		return nil
	}
	fmt.Fprintln(out, "storage.engine sqlite: SQLite files migrate themselves when opened")
	for _, file := range []struct {
		key, path string
		open      func() (io.Closer, error)
	}{
		{"registry.path", f.Registry.Path, func() (io.Closer, error) {
			r, err := registry.Open(ctx, f.Registry.Path)
			if err != nil {
				return nil, err
			}
			r.Close()
			return audit.Open(ctx, f.Registry.Path, time.Now)
		}},
		{"outbox.path", f.Outbox.Path, func() (io.Closer, error) {
			oc := outbox.DefaultConfig()
			oc.Path = f.Outbox.Path
			return sqlitestore.Open(ctx, oc)
		}},
	} {
		if _, err := os.Stat(file.path); errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(out, "%s %s: does not exist yet (created at first use)\n", file.key, file.path)
			continue
		}
		c, err := file.open()
		if err != nil {
			return fmt.Errorf("%s: %w", file.key, err)
		}
		c.Close()
		fmt.Fprintf(out, "%s %s: up to date\n", file.key, file.path)
	}
	return nil
}

// migrateCopy copies the SQLite files of f into the PostgreSQL database of
// storage.dsn and prints what it copied.
func migrateCopy(ctx context.Context, out io.Writer, f config.File) error {
	sc := f.Storage
	sc.Engine = storage.Postgres // the target, whatever the file says
	if err := sc.Validate(); err != nil {
		return err
	}
	db, err := openPostgres(ctx, sc.DSN)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := storage.MigrateSQLite(ctx, f.Registry.Path, f.Outbox.Path, db)
	if err != nil {
		return errors.New(oneLineErr(err))
	}
	applied, _, err := db.Version(ctx)
	if err != nil {
		return fmt.Errorf("storage.dsn: schema version: %s", oneLineErr(err))
	}
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

// openPostgres connects to dsn and migrates its schema. Its errors name
// storage.dsn, never its value.
func openPostgres(ctx context.Context, dsn string) (*pgstore.DB, error) {
	db, err := pgstore.Open(ctx, dsn)
	if err != nil {
		msg := strings.TrimPrefix(oneLineErr(err), "storage: ")
		if !strings.HasPrefix(msg, "storage.dsn") {
			msg = "storage.dsn: " + msg
		}
		return nil, errors.New(msg)
	}
	return db, nil
}

// oneLineErr is err's text on one line.
func oneLineErr(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}
