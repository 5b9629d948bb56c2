package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/outbox"
	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/pkg/storage"
)

func init() { commands = append(commands, newDeviceCmd) }

// defaultRegistryPath is the registry file when neither --db nor
// IOTGW_REGISTRY_PATH names one.
const defaultRegistryPath = "iotgw.db"

func newDeviceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Manage the device registry: add, import, export, list, show, rotate, disable, enable, revoke, remove, set-freshness, reset-counter",
		Long: `device manages the device registry the gateway reads its devices and
shared secrets from. A running gateway picks up every change within its
registry refresh interval.

With storage.engine sqlite (the default) the registry is a SQLite file:
--db, else $IOTGW_REGISTRY_PATH, else registry.path from --config, else
./iotgw.db; its directory must exist. With storage.engine postgres (from
--config, or $IOTGW_STORAGE_ENGINE and $IOTGW_STORAGE_DSN) it is the
PostgreSQL database every gateway shares, and --db is refused. list and show never print secrets; add and rotate
print a generated secret exactly once.

Secrets are sealed under the KEK named by security.kek_file (from
--config or $IOTGW_SECURITY_KEK_FILE); without one they are stored in the
clear and add and rotate warn. See iotgw kek.`,
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	cmd.PersistentFlags().String("db", "", "registry SQLite file (default $IOTGW_REGISTRY_PATH, else "+defaultRegistryPath+")")
	cmd.PersistentFlags().String("config", "", "YAML config file (for registry.path and security.kek_file)")
	cmd.AddCommand(newDeviceAddCmd(), newDeviceListCmd(), newDeviceShowCmd(), newDeviceRotateCmd(),
		newDeviceSetEnabledCmd(false), newDeviceSetEnabledCmd(true), newDeviceRemoveCmd())
	cmd.AddCommand(newDeviceRevokeCmd())
	for _, sub := range deviceSubcommands {
		cmd.AddCommand(sub())
	}
	return cmd
}

// deviceSubcommands are the device subcommands defined in their own files.
var deviceSubcommands []func() *cobra.Command

// registryPath returns the registry file for cmd: --db, else
// $IOTGW_REGISTRY_PATH, else defaultRegistryPath.
func registryPath(cmd *cobra.Command) string {
	if f := cmd.Flags().Lookup("db"); f != nil && f.Changed {
		return f.Value.String()
	}
	if p := os.Getenv("IOTGW_REGISTRY_PATH"); p != "" {
		return p
	}
	if f := cmd.Flags().Lookup("config"); f != nil && f.Changed {
		if c, err := config.LoadUnvalidated(f.Value.String()); err == nil && c.Registry.Path != "" {
			return c.Registry.Path
		}
	}
	return defaultRegistryPath
}

// store is where one CLI command finds the registry and the audit trail:
// the storage section (engine) and, for SQLite, the registry file.
type store struct {
	cfg  storage.Config
	path string
	// outbox is the outbox section (device show's last accepted).
	outbox outbox.Config
}

// String names the store for messages (never a DSN).
func (s store) String() string { return s.cfg.Describe(s.path) }

// storeOf returns the store for cmd: the storage section from --config (if
// the command has it) and the environment, and registryPath. --db names a
// SQLite file, so it is refused with storage.engine postgres.
func storeOf(cmd *cobra.Command) (store, error) {
	path := ""
	if f := cmd.Flags().Lookup("config"); f != nil {
		path = f.Value.String()
	}
	c, err := config.LoadUnvalidated(path)
	if err != nil {
		return store{}, err
	}
	if err := c.Storage.Validate(); err != nil {
		return store{}, err
	}
	if f := cmd.Flags().Lookup("db"); f != nil && f.Changed {
		if err := c.Storage.FileUnused("--db"); err != nil {
			return store{}, usagef("%v", err)
		}
	}
	return store{cfg: c.Storage, path: registryPath(cmd), outbox: c.Outbox}, nil
}

// securityConfig returns the security section from --config (if any) and
// the environment (IOTGW_SECURITY_KEK_FILE, IOTGW_SECURITY_REQUIRE_KEK).
func securityConfig(cmd *cobra.Command) (registry.SecurityConfig, error) {
	path := ""
	if f := cmd.Flags().Lookup("config"); f != nil {
		path = f.Value.String()
	}
	c, err := config.LoadUnvalidated(path)
	if err != nil {
		return registry.SecurityConfig{}, err
	}
	return c.Security, c.Security.Validate()
}

// warnUnsealed prints the unsealed-secrets warning for a registry without a
// KEK (and fails when security.require_kek is set, which Validate checks).
func warnUnsealed(cmd *cobra.Command, r *registry.Registry) {
	if !r.Sealed() {
		fmt.Fprintln(cmd.ErrOrStderr(), "warning: "+registry.ErrNoKEK.Error())
	}
}

// withRegistry opens the registry, runs fn and closes it. Unless create is
// set, a missing registry file is an error rather than a new empty registry.
func withRegistry(cmd *cobra.Command, create bool, fn func(context.Context, *registry.Registry) error) error {
	s, err := storeOf(cmd)
	if err != nil {
		return err
	}
	if !create && s.path != "" {
		if err := s.cfg.RegistryExists(s.path); err != nil {
			return err
		}
	}
	sec, err := securityConfig(cmd)
	if err != nil {
		return err
	}
	kek, err := sec.LoadKEK()
	if err != nil {
		return err
	}
	r, closeReg, err := storage.OpenRegistry(cmd.Context(), s.cfg, s.path, registry.WithKEK(kek))
	if err != nil {
		return err
	}
	defer closeReg() //nolint:errcheck // read or committed already
	return fn(cmd.Context(), r)
}

// deviceIDArg accepts exactly one argument, a valid device id.
func deviceIDArg(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usagef("%s: want exactly one device id, got %d arguments", cmd.CommandPath(), len(args))
	}
	if !envelope.ValidDeviceID(args[0]) {
		return usagef("bad device id %q: %v", args[0], registry.ErrBadID)
	}
	return nil
}

// noArguments refuses positional arguments.
func noArguments(cmd *cobra.Command, args []string) error {
	if len(args) != 0 {
		return usagef("%s: unexpected argument %q", cmd.CommandPath(), args[0])
	}
	return nil
}

// newOrStdinSecret returns a fresh secret, or with fromStdin the first line
// of stdin after checking it is a valid secret (for device add and rotate).
func newOrStdinSecret(cmd *cobra.Command, fromStdin bool) (string, error) {
	if !fromStdin {
		return registry.NewSecret()
	}
	secret, _, err := readSecretLine(cmd.InOrStdin())
	if err != nil {
		return "", err
	}
	if !registry.ValidSecret(secret) {
		return "", usagef("%v", registry.ErrBadSecret)
	}
	return secret, nil
}

// readSecretLine reads the first line of r as a secret. Only the line end
// ("\n" or "\r\n") is removed. It returns a reader positioned after that
// line, for callers that read more from the same stream.
func readSecretLine(r io.Reader) (string, *bufio.Reader, error) {
	br := bufio.NewReader(r)
	line, err := br.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", nil, fmt.Errorf("read secret from stdin: %w", err)
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	if line == "" {
		return "", nil, usagef("no secret on the first line of stdin")
	}
	return line, br, nil
}

func newDeviceAddCmd() *cobra.Command {
	var (
		fromStdin bool
		issueCert bool
		certsDir  string
		csr       deviceCSR
		freshness string
	)
	cmd := &cobra.Command{
		Use:   "add ID",
		Short: "Register a new, enabled device and print its new secret once",
		Long: `add registers a device. Without --secret-stdin it generates a secret (32
random bytes as 64 hex characters) and prints it once on stdout: store it
in the device now, it will not be shown again. With --secret-stdin the
secret is the first line of stdin (16-1024 printable characters, no
surrounding whitespace; only the line end is removed).

With --issue-cert it also issues the device's client certificate (CN = the
device id) from the CA in --certs, as "iotgw pki issue" does, so one
command provisions a device. If the certificate cannot be issued, the
device is not registered either.

With --csr FILE it instead signs the device's client certificate from a
certificate signing request made on the device (see "iotgw pki sign": the
CN must be the device id, the key ECDSA P-256/P-384 or RSA >= 2048, and
nothing but the key is taken from the request), valid for --days (default
730). This is the recommended path: the device's private key never leaves
it. The CSR is checked before the device is registered; if the
certificate cannot be signed, the device is not registered either.

--freshness counter registers a device without a clock: it proves that a
message is new with a counter instead of a timestamp (docs/PROTOCOL.md,
section 2a). The default is timestamp; "iotgw device set-freshness"
changes it later.

The id "gateway" is reserved: it is the gateway's own identity at the
broker.`,
		Example: `  iotgw device add sensor_001 --db /var/lib/iotgw/registry.db
  SECRET=$(iotgw device add sensor_002)
  iotgw device add sensor_003 --secret-stdin < sensor_003.secret
  iotgw device add sensor_004 --issue-cert --certs /etc/iotgw/certs
  iotgw device add sensor_005 --csr sensor_005.csr --certs /etc/iotgw/certs
  iotgw device add meter_001 --freshness counter`,
		Args: deviceIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if id == pki.GatewayIdentity {
				return usagef("device id %q is reserved: it is the gateway's identity at the broker", id)
			}
			if !issueCert && !csr.set() && cmd.Flags().Changed("certs") {
				return usagef("--certs needs --issue-cert or --csr")
			}
			if issueCert && csr.set() {
				return usagef("--issue-cert and --csr exclude each other (with --csr the device keeps its own key)")
			}
			if !csr.set() && cmd.Flags().Changed("days") {
				return usagef("--days needs --csr")
			}
			fresh, err := registry.CheckFreshness(freshness)
			if err != nil {
				return usagef("--freshness: %v", err)
			}
			if csr.set() {
				if err := csr.check(id, certsDir); err != nil {
					return err
				}
			}
			if issueCert {
				crt, key := pki.DeviceCert(certsDir, id)
				for _, p := range []string{crt, key} {
					if _, err := os.Lstat(p); err == nil {
						return fmt.Errorf("%s already exists; remove it or use another device id", p)
					}
				}
				if _, err := os.Stat(pki.Paths(certsDir).CACert); err != nil {
					return fmt.Errorf("no CA in %s (run: iotgw pki init --dir %s)", certsDir, certsDir)
				}
			}
			generated := !fromStdin
			secret, err := newOrStdinSecret(cmd, fromStdin)
			if err != nil {
				return err
			}
			err = withRegistry(cmd, true, func(ctx context.Context, r *registry.Registry) error {
				warnUnsealed(cmd, r)
				if err := r.AddDevice(ctx, registry.NewDevice{ID: id, Secret: secret, Freshness: fresh}); err != nil {
					return err
				}
				if csr.set() {
					is, err := csr.sign(id, certsDir)
					if err != nil {
						if rerr := r.Remove(ctx, id); rerr != nil {
							return fmt.Errorf("%w; and undoing the registration failed: %w", err, rerr)
						}
						return fmt.Errorf("%w; device not registered", err)
					}
					printIssued(cmd.ErrOrStderr(), is)
					return nil
				}
				if !issueCert {
					return nil
				}
				if err := pki.Issue(certsDir, id, time.Now()); err != nil {
					if rerr := r.Remove(ctx, id); rerr != nil {
						return fmt.Errorf("%w; and undoing the registration failed: %w", err, rerr)
					}
					return fmt.Errorf("%w; device not registered", err)
				}
				crt, key := pki.DeviceCert(certsDir, id)
				fmt.Fprintf(cmd.ErrOrStderr(), "issued %s and %s\n", crt, key)
				return nil
			})
			if err != nil {
				return err
			}
			// The secret is printed even if the audit entry fails: it is
			// registered and would otherwise be lost. The failure still exits 1.
			auditErr := recordCmd(cmd, "device.add", id, 1)
			if fresh == registry.FreshnessCounter {
				auditErr = errors.Join(auditErr, recordCmdReason(cmd, "device.set_freshness", id, fresh))
			}
			if csr.set() {
				auditErr = errors.Join(auditErr, recordCmd(cmd, "pki.sign", id, 1))
			}
			if !generated {
				fmt.Fprintf(cmd.ErrOrStderr(), "added device %s\n", id)
				return auditErr
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "added device %s; its secret is printed once, on stdout, and will not be shown again\n", id)
			if _, err = fmt.Fprintln(cmd.OutOrStdout(), secret); err != nil {
				return err
			}
			return auditErr
		},
	}
	cmd.Flags().BoolVar(&fromStdin, "secret-stdin", false, "read the secret from the first line of stdin instead of generating one")
	cmd.Flags().BoolVar(&issueCert, "issue-cert", false, "also issue the device's client certificate from the CA in --certs")
	cmd.Flags().StringVar(&certsDir, "certs", "certs", "PKI directory made by \"iotgw pki init\" (with --issue-cert or --csr)")
	cmd.Flags().StringVar(&freshness, "freshness", registry.FreshnessTimestamp, "how the device proves a message is new: timestamp or counter")
	csr.addFlags(cmd.Flags())
	return cmd
}

func newDeviceListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List devices (never their secrets)",
		Args:  noArguments,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				devices, err := r.List(ctx)
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DEVICE\tSTATE\tCREATED")
				for _, d := range devices {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", d.ID, infoState(d), d.CreatedAt.Format(time.RFC3339))
				}
				return tw.Flush()
			})
		},
	}
}

func newDeviceShowCmd() *cobra.Command {
	var window time.Duration
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show one device (never its secret) and its recent activity",
		Args:  deviceIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				d, err := r.Get(ctx, args[0])
				if err != nil {
					return err
				}
				keys, err := r.Keys(ctx, args[0])
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				fmt.Fprintf(out, "device:  %s\nstate:   %s\ncreated: %s\n", d.ID, infoState(d), d.CreatedAt.Format(time.RFC3339))
				if d.Revoked() {
					fmt.Fprintf(out, "revoked: %s\n", d.RevokedAt.Format(time.RFC3339))
				}
				printFreshness(cmd, out, d)
				fmt.Fprintf(out, "sealed:  %s\n", map[bool]string{true: "yes", false: "no (set security.kek_file)"}[r.Sealed()])
				now := time.Now()
				for _, k := range keys {
					exp := "never"
					switch {
					case k.ExpiresAt.IsZero():
					case !now.Before(k.ExpiresAt):
						exp = k.ExpiresAt.Format(time.RFC3339) + " (expired)"
					default:
						exp = k.ExpiresAt.Format(time.RFC3339)
					}
					fmt.Fprintf(out, "key %d:   created %s, expires %s\n", k.ID, k.CreatedAt.Format(time.RFC3339), exp)
				}
				return printActivity(cmd, out, d.ID, d, window)
			})
		},
	}
	cmd.Flags().DurationVar(&window, "since", 24*time.Hour, "activity window")
	outboxFlag(cmd) // read by printFreshness
	return cmd
}

// infoState is "revoked", "enabled" or "disabled".
func infoState(d registry.Info) string {
	if d.Revoked() {
		return "revoked"
	}
	return stateWord(d.Enabled)
}

func stateWord(enabled bool) string {
	if enabled {
		return "enabled"
	}
	return "disabled"
}

// newDeviceSetEnabledCmd returns "enable" or "disable".
func newDeviceSetEnabledCmd(enabled bool) *cobra.Command {
	verb := map[bool]string{true: "enable", false: "disable"}[enabled]
	return &cobra.Command{
		Use:   verb + " ID",
		Short: strings.ToUpper(verb[:1]) + verb[1:] + " a device; a disabled device's messages are rejected as \"disabled\"",
		Args:  deviceIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				if err := r.SetEnabled(ctx, args[0], enabled); err != nil {
					return err
				}
				if err := recordCmd(cmd, "device."+verb, args[0], 1); err != nil {
					return err
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%sd device %s\n", verb, args[0])
				return err
			})
		},
	}
}

func newDeviceRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a device and its secret; its messages become \"unknown_device\"",
		Args:  deviceIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				if err := r.Remove(ctx, args[0]); err != nil {
					return err
				}
				if err := recordCmd(cmd, "device.remove", args[0], 1); err != nil {
					return err
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "removed device %s\n", args[0])
				return err
			})
		},
	}
}

// defaultOverlap is how long the old key stays valid after a rotation.
const defaultOverlap = 24 * time.Hour

func newDeviceRotateCmd() *cobra.Command {
	var (
		fromStdin bool
		overlap   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rotate ID",
		Short: "Give a device a new secret; the old one stays valid for --overlap",
		Long: `rotate adds a new key to the device and prints its generated secret once on
stdout (or takes it from the first line of stdin with --secret-stdin). The
device's older keys stay valid for --overlap (default 24h; 0 ends them at
once), so messages signed with either are accepted meanwhile; then they
expire, stop verifying and are deleted (by the gateway's registry refresh,
and by the next rotate). Replies are signed with the newest key the device
has been seen to use. A running gateway picks the new key up within
registry.refresh. A revoked device cannot be rotated.`,
		Example: `  NEW=$(iotgw device rotate sensor_001 --db /var/lib/iotgw/registry.db)
  iotgw device rotate sensor_002 --overlap 1h --secret-stdin < sensor_002.secret`,
		Args: deviceIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if overlap < 0 {
				return usagef("--overlap: %v", registry.ErrBadOverlap)
			}
			generated := !fromStdin
			secret, err := newOrStdinSecret(cmd, fromStdin)
			if err != nil {
				return err
			}
			var k registry.KeyInfo
			err = withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				warnUnsealed(cmd, r)
				k, err = r.Rotate(ctx, id, secret, overlap)
				return err
			})
			if err != nil {
				return err
			}
			ends := "at once"
			if overlap > 0 {
				ends = "at " + k.CreatedAt.Add(overlap).Format(time.RFC3339)
			}
			auditErr := recordCmd(cmd, "device.rotate", id, 1)
			if !generated {
				fmt.Fprintf(cmd.ErrOrStderr(), "rotated device %s to key %d; older keys expire %s\n", id, k.ID, ends)
				return auditErr
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "rotated device %s to key %d; older keys expire %s; the new secret is printed once, on stdout, and will not be shown again\n", id, k.ID, ends)
			if _, err = fmt.Fprintln(cmd.OutOrStdout(), secret); err != nil {
				return err
			}
			return auditErr
		},
	}
	cmd.Flags().BoolVar(&fromStdin, "secret-stdin", false, "read the new secret from the first line of stdin instead of generating one")
	cmd.Flags().DurationVar(&overlap, "overlap", defaultOverlap, "how long the device's older keys stay valid")
	return cmd
}
