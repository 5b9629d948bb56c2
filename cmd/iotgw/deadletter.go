package main

import (
	"context"
	"fmt"
	"github.com/iotgw/iotgw/pkg/storage"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/outbox"
)

func init() { commands = append(commands, newDeadletterCmd) }

func newDeadletterCmd() *cobra.Command {
	var path, cfgPath, dbPath string
	open := func(cmd *cobra.Command) (deadStore, error) {
		f, err := config.LoadUnvalidated(cfgPath)
		if err != nil {
			return nil, err
		}
		if err := f.Storage.Validate(); err != nil {
			return nil, err
		}
		if path != "" {
			if err := f.Storage.FileUnused("--outbox"); err != nil {
				return nil, usagef("%v", err)
			}
		}
		st, closeSt, err := storage.OpenDeadLetters(cmd.Context(), f.Storage, f.Outbox, path)
		if err != nil {
			return nil, err
		}
		return engineStore{st, closeSt}, nil
	}
	seqs := func(args []string) ([]int64, error) {
		var out []int64
		for _, a := range args {
			n, err := strconv.ParseInt(a, 10, 64)
			if err != nil || n <= 0 {
				return nil, usagef("%q is not a dead-letter id (see 'iotgw deadletter list')", a)
			}
			out = append(out, n)
		}
		return out, nil
	}
	cmd := &cobra.Command{
		Use:   "deadletter",
		Short: "List, retry or drop messages the backend never accepted",
		Long: `Messages that failed backend.max_attempts times or waited longer than
backend.max_age are moved to the dead-letter table of the outbox database.
'retry' moves them back into the outbox; a running gateway forwards them
within seconds. The outbox is found with --outbox, else outbox.path from
--config or IOTGW_OUTBOX_PATH, else iotgw-outbox.db.`,
	}
	cmd.PersistentFlags().StringVar(&path, "outbox", "", "outbox database path")
	cmd.PersistentFlags().StringVar(&cfgPath, "config", "", "YAML config file (for outbox.path)")
	cmd.PersistentFlags().StringVar(&dbPath, "db", "", "registry file holding the audit trail (default registry.path from --config or $IOTGW_REGISTRY_PATH)")

	list := &cobra.Command{Use: "list", Short: "List dead letters", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := open(cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			dead, err := s.DeadLetters(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tDEVICE\tMESSAGE_ID\tATTEMPTS\tDEAD_AT\tLAST_ERROR")
			for _, d := range dead {
				fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%s\t%s\n", d.Seq, d.DeviceID, d.MessageID, d.Attempts, d.DeadAt.UTC().Format(time.RFC3339), d.LastError)
			}
			w.Flush()
			fmt.Fprintf(cmd.ErrOrStderr(), "%d dead letter(s)\n", len(dead))
			return nil
		}}
	op := func(use, short string, retry bool) *cobra.Command {
		var all bool
		c := &cobra.Command{Use: use + " (ID... | --all)", Short: short,
			RunE: func(cmd *cobra.Command, args []string) error {
				if all == (len(args) > 0) {
					return usagef("give dead-letter ids or --all, not both or neither")
				}
				ids, err := seqs(args)
				if err != nil {
					return err
				}
				s, err := open(cmd)
				if err != nil {
					return err
				}
				defer s.Close()
				var n int
				if retry {
					n, err = s.RetryDead(cmd.Context(), ids)
				} else {
					n, err = s.DropDead(cmd.Context(), ids)
				}
				if err != nil {
					return err
				}
				if len(ids) > 0 && n != len(ids) {
					past := map[bool]string{true: "retried", false: "dropped"}[retry]
					return fmt.Errorf("%s %d of %d: some ids are not dead letters", past, n, len(ids))
				}
				verb := map[bool]string{true: "moved back to the outbox", false: "dropped"}[retry]
				fmt.Fprintf(cmd.OutOrStdout(), "%d dead letter(s) %s\n", n, verb)
				return recordDeadletter(cmd, dbPath, cfgPath, "deadletter."+use, n)
			}}
		c.Flags().BoolVar(&all, "all", false, "every dead letter")
		return c
	}
	cmd.AddCommand(list, op("retry", "Move dead letters back into the outbox", true), op("drop", "Delete dead letters for good", false))
	return cmd
}

// recordDeadletter records a retry or drop in the audit trail of the
// registry (--db, else registry.path from --config or the environment).
// A registry that does not exist is not created: the action is then only
// reported as unaudited on stderr.
func recordDeadletter(cmd *cobra.Command, dbPath, cfgPath, action string, n int) error {
	f, err := config.LoadUnvalidated(cfgPath)
	if err != nil {
		return err
	}
	if dbPath == "" {
		dbPath = f.Registry.Path
	}
	if err := f.Storage.RegistryExists(dbPath); err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s not recorded in the audit trail: registry %s not found (give --db or --config)\n", action, dbPath)
		return nil
	}
	return recordAdminIn(cmd.Context(), store{cfg: f.Storage, path: dbPath}, action, "", n)
}

// deadStore is the dead-letter table on either engine.
type deadStore interface {
	DeadLetters(ctx context.Context) ([]outbox.Dead, error)
	RetryDead(ctx context.Context, seqs []int64) (int, error)
	DropDead(ctx context.Context, seqs []int64) (int, error)
	Close() error
}

// engineStore is an outbox with the closer of what opened it.
type engineStore struct {
	storage.Outbox
	close func()
}

func (s engineStore) Close() error { s.close(); return nil }
