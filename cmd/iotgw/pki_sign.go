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

func init() { pkiSubcommands = append(pkiSubcommands, newPKISignCmd) }

// csrUsage is a CSR refusal that is the operator's input, not a fault:
// exit status 2 with the one-line reason.
func csrUsage(err error) error {
	for _, e := range []error{pki.ErrBadCSR, pki.ErrCSRSignature, pki.ErrCSRSubject, pki.ErrWeakKey,
		pki.ErrBadValidity, pki.ErrInvalidDeviceID, pki.ErrReservedDeviceID} {
		if errors.Is(err, e) {
			return &usageError{err}
		}
	}
	return err
}

// addDaysFlag adds --days, the validity of a certificate signed from a CSR.
func addDaysFlag(fs *pflag.FlagSet, days *int) {
	fs.IntVar(days, "days", pki.DefaultCSRDays, fmt.Sprintf("validity of the certificate in days (1-%d; never past the CA's expiry)", pki.MaxCSRDays))
}

// printIssued tells the operator what was signed (on w, stderr).
func printIssued(w io.Writer, is pki.Issued) {
	fmt.Fprintf(w, "signed %s for %s (%s key, serial %s, expires %s)\n",
		is.Path, is.DeviceID, is.Key, is.Serial, is.NotAfter.UTC().Format(time.RFC3339))
}

func newPKISignCmd() *cobra.Command {
	var (
		dir, csrPath string
		days         int
	)
	cmd := &cobra.Command{
		Use:   "sign DEVICE_ID --csr FILE --dir DIR [--days N]",
		Short: "Sign a device's client certificate from its CSR; its key never leaves the device",
		Long: `sign writes DIR/devices/DEVICE_ID.crt, a client certificate for the key in
the certificate signing request FILE (PEM), signed by the CA in DIR. The
device made the key and keeps it: no private key is written here.

The request's signature must verify, its subject must hold exactly one
Common Name and it must be DEVICE_ID (a request for another name is
refused), and its key must be ECDSA P-256 or P-384, or RSA of at least 2048
bits. Nothing else the request asks for is copied: the certificate has
subject CN=DEVICE_ID, O=iotgw, key usage digitalSignature, extended key
usage clientAuth and CA:false, whatever SANs, key usages or basic
constraints the request names. It is valid for --days (default 730, at
most 3650, never past the CA's expiry). sign refuses to overwrite an
existing device certificate or key.

The issuance is recorded in the audit trail of the registry (--db,
$IOTGW_REGISTRY_PATH, registry.path from --config, or ./iotgw.db; or the
PostgreSQL store of storage.engine postgres), which must exist: no
certificate is signed that the trail would not record.`,
		Example: `  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout sensor_007.key -subj /CN=sensor_007 -out sensor_007.csr   # on the device
  iotgw pki sign sensor_007 --csr sensor_007.csr --dir certs --db /var/lib/iotgw/registry.db`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("pki sign: want exactly one DEVICE_ID, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if csrPath == "" {
				return usagef("pki sign: --csr FILE is required")
			}
			csr, err := pki.ReadCSR(csrPath)
			if err != nil {
				return csrUsage(err)
			}
			if _, _, err := pki.CheckCSR(csr, id); err != nil {
				return csrUsage(fmt.Errorf("%s: %w", csrPath, err))
			}
			s, err := storeOf(cmd)
			if err != nil {
				return err
			}
			if err := s.cfg.RegistryExists(s.path); err != nil {
				return fmt.Errorf("pki sign records each issuance in the registry's audit trail: %w (name it with --db or --config)", err)
			}
			is, err := pki.SignCSR(dir, id, csr, days, time.Now())
			if err != nil {
				return csrUsage(err)
			}
			printIssued(cmd.ErrOrStderr(), is)
			auditErr := recordCmd(cmd, "pki.sign", id, 1)
			return errors.Join(printWritten(cmd.OutOrStdout(), is.Path), auditErr)
		},
	}
	addDirFlag(cmd.Flags(), &dir)
	cmd.Flags().StringVar(&csrPath, "csr", "", "the device's certificate signing request (PEM)")
	addDaysFlag(cmd.Flags(), &days)
	cmd.Flags().String("db", "", "registry SQLite file whose audit trail records the issuance (default $IOTGW_REGISTRY_PATH, else "+defaultRegistryPath+")")
	cmd.Flags().String("config", "", "YAML config file (for registry.path or storage.engine postgres)")
	return cmd
}
