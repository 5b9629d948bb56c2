package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/registry"
)

func init() { commands = append(commands, newKEKCmd) }

func newKEKCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kek",
		Short: "Manage the key-encryption key that seals device secrets: new, rotate",
		Long: `kek manages the key-encryption key (KEK) named by security.kek_file. Device
secrets are sealed under it with AES-256-GCM, each bound to its device id
and key id. The registry records the KEK's fingerprint (an HMAC of a fixed
label under the KEK, never the KEK), so a gateway started with another KEK
fails with one line.

To seal a registry whose secrets are still in the clear, run kek rotate
with no current KEK configured: it seals every row under --new.`,
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	cmd.AddCommand(newKEKNewCmd(), newKEKRotateCmd())
	return cmd
}

func newKEKNewCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "new FILE",
		Short: "Write a fresh KEK (64 hex characters) to FILE, mode 0600",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("%s: want exactly one file, got %d arguments", cmd.CommandPath(), len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := registry.NewKEKHex()
			if err != nil {
				return err
			}
			defer clear(b)
			f, err := os.OpenFile(args[0], os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600) // #nosec G304 -- the operator names the file
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("%s already exists; not overwriting a key", args[0])
			}
			if err != nil {
				return fmt.Errorf("kek new: %w", err)
			}
			if _, err := f.Write(b); err != nil {
				f.Close()
				return fmt.Errorf("kek new: %w", err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("kek new: %w", err)
			}
			k, err := registry.ParseKEK(b)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (KEK %s)\n", args[0], k.Short())
			return err
		},
	}
}

func newKEKRotateCmd() *cobra.Command {
	var newFile string
	cmd := &cobra.Command{
		Use:   "rotate --new FILE",
		Short: "Re-seal every device secret under the KEK in FILE, in one transaction",
		Long: `rotate opens every sealed secret with the current KEK (security.kek_file,
from --config or $IOTGW_SECURITY_KEK_FILE) and seals it again under the KEK
in --new, in one transaction: if any row fails to open, nothing changes.
Then the file is vacuumed and its WAL truncated, so the old rows do not
linger on disk.

With no current KEK configured, rotate seals a registry whose secrets are
stored in the clear: that is how an existing registry becomes sealed.

With gateways running, first give each one the new KEK as
security.kek_file and the current one as security.previous_kek_file and
restart it, then rotate: they open the registry under either KEK
(docs/SECURITY.md, "Rotating the KEK"). A gateway that holds only the old
KEK fails closed after the rotation: disables and revocations still
apply, but every device whose key was re-sealed is rejected as
key_unavailable and /readyz says the registry is stale, until it holds
the new KEK: write it to the file security.kek_file names and send the
gateway SIGHUP (it re-reads its KEK files), or restart it.`,
		Example: `  iotgw kek new /etc/iotgw/kek.new
  iotgw kek rotate --new /etc/iotgw/kek.new --config /etc/iotgw/iotgw.yaml
  mv /etc/iotgw/kek.new /etc/iotgw/kek     # the file security.kek_file names`,
		Args: noArguments,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if newFile == "" {
				return usagef("--new FILE is required")
			}
			next, err := registry.LoadKEK(newFile)
			if err != nil {
				return fmt.Errorf("--new: %w", err)
			}
			return withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				was := r.Sealed()
				n, err := r.Reseal(ctx, next)
				if err != nil {
					return err
				}
				verb := "re-sealed"
				if !was {
					verb = "sealed"
				}
				if _, err = fmt.Fprintf(cmd.OutOrStdout(), "%s %d device keys under KEK %s; now point security.kek_file at %s\n", verb, n, next.Short(), newFile); err != nil {
					return err
				}
				return recordCmd(cmd, "kek.rotate", "", n)
			})
		},
	}
	cmd.Flags().StringVar(&newFile, "new", "", "file holding the new KEK (mode 0600; iotgw kek new makes one)")
	cmd.Flags().String("db", "", "registry SQLite file (default $IOTGW_REGISTRY_PATH, else "+defaultRegistryPath+")")
	cmd.Flags().String("config", "", "YAML config file (for registry.path and the current security.kek_file)")
	return cmd
}
