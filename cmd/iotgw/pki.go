package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/iotgw/iotgw/pkg/pki"
)

func init() { commands = append(commands, newPKICmd) }

// newPKICmd returns "iotgw pki": create the CA, broker and gateway
// certificates (init) and device certificates (issue).
func newPKICmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pki",
		Short: "Create the CA and the broker, gateway and device certificates",
		Long: `pki creates the private CA that the broker, the gateway and the devices use
for mutual TLS. Keys are ECDSA P-256 (PKCS#8 PEM); see certs/README.md for
the layout and file permissions.`,
	}
	// Unknown or malformed flags are bad usage (exit status 2).
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	cmd.AddCommand(newPKIInitCmd(), newPKIIssueCmd(), newPKICRLCmd())
	for _, sub := range pkiSubcommands {
		cmd.AddCommand(sub())
	}
	return cmd
}

// pkiSubcommands are the pki subcommands defined in their own files.
var pkiSubcommands []func() *cobra.Command

func newPKIInitCmd() *cobra.Command {
	var dir string
	var hosts []string
	cmd := &cobra.Command{
		Use:   "init --dir DIR [--host NAME]...",
		Short: "Create the CA, the broker certificate and the gateway certificate",
		Long: `init creates DIR (if missing) with ca.crt/ca.key, broker.crt/broker.key and
gateway.crt/gateway.key. The broker certificate is valid for localhost,
127.0.0.1 and ::1 plus each --host (an IP address or DNS name). init refuses
to run if DIR/ca.key exists, so an existing CA is never overwritten.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := pki.Init(dir, hosts, time.Now()); err != nil {
				if errors.Is(err, pki.ErrInvalidHost) {
					return &usageError{err}
				}
				return err
			}
			return printWritten(cmd.OutOrStdout(), pki.Paths(dir).All()...)
		},
	}
	addDirFlag(cmd.Flags(), &dir)
	cmd.Flags().StringArrayVar(&hosts, "host", nil, "extra broker host name or IP address for the broker certificate (repeatable)")
	return cmd
}

func newPKIIssueCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "issue DEVICE_ID --dir DIR",
		Short: "Create a device's client certificate, signed by the CA in DIR",
		Long: `issue writes DIR/devices/DEVICE_ID.crt and .key, a client certificate whose
Common Name is DEVICE_ID (1-64 characters of [A-Za-z0-9_.-], not starting
with a dot; "gateway" is reserved). It refuses to overwrite an existing device certificate.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("pki issue: want exactly one DEVICE_ID, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pki.Issue(dir, args[0], time.Now()); err != nil {
				if errors.Is(err, pki.ErrInvalidDeviceID) || errors.Is(err, pki.ErrReservedDeviceID) {
					return &usageError{err}
				}
				return err
			}
			crt, key := pki.DeviceCert(dir, args[0])
			return printWritten(cmd.OutOrStdout(), key, crt)
		},
	}
	addDirFlag(cmd.Flags(), &dir)
	return cmd
}

func newPKICRLCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "crl --dir DIR",
		Short: "Write an empty DIR/crl.pem if there is none (a PKI made before revocation)",
		Long: `crl writes DIR/crl.pem, an empty CRL signed by the CA in DIR, unless it
exists. Mosquitto refuses to start when the crlfile that mosquitto.conf names
is missing; "iotgw pki init" writes it, so this is for older PKI directories.
"iotgw device revoke" adds certificates to it.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			wrote, err := pki.EnsureCRL(dir, time.Now())
			if err != nil {
				return err
			}
			if !wrote {
				_, err = fmt.Fprintln(cmd.OutOrStdout(), "kept", pki.Paths(dir).CRL)
				return err
			}
			return printWritten(cmd.OutOrStdout(), pki.Paths(dir).CRL)
		},
	}
	addDirFlag(cmd.Flags(), &dir)
	return cmd
}

func addDirFlag(fs *pflag.FlagSet, dir *string) {
	fs.StringVar(dir, "dir", "certs", "PKI directory")
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) != 0 {
		return usagef("%s: unexpected argument %q", cmd.CommandPath(), args[0])
	}
	return nil
}

// printWritten prints one "wrote PATH" line per file.
func printWritten(w io.Writer, paths ...string) error {
	for _, p := range paths {
		if _, err := fmt.Fprintln(w, "wrote", p); err != nil {
			return fmt.Errorf("print: %w", err)
		}
	}
	return nil
}
