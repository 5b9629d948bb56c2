package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
)

// mosquittoRestartStep is printed after a revocation. mosquitto#35: 2.0
// reads its crlfile only at start. 2.0.11 was seen to apply a new CRL to
// new handshakes after SIGHUP, but the revoked device's open connection
// stayed open; a restart does both. Until then the registry alone rejects
// the device's messages.
//
// Under docker-compose.yml the gateway shares the broker's network
// namespace (network_mode: service:mosquitto), so "restart mosquitto"
// alone leaves it in a namespace that no longer exists, reconnecting
// forever (issue 16, item 11). The compose step recreates the pki service
// (which publishes the new crl.pem to the broker's volume), the broker and
// the gateway, in that order; test/compose runs it as printed.
const mosquittoRestartStep = `NEXT STEP: restart Mosquitto, so it loads the new CRL and drops the device's open connection (mosquitto#35; a reload/SIGHUP leaves that connection open):
  systemctl restart mosquitto                                     (a packaged broker)
  docker compose up -d --force-recreate pki mosquitto gateway     (docker-compose.yml; v1: docker-compose)
With docker-compose.yml, never restart mosquitto alone: the gateway shares its network namespace and must be recreated with it.
Until then the broker still accepts the certificate; the gateway already rejects the device's messages as "disabled".`

// newDeviceRevokeCmd returns "device revoke ID --certs DIR": disable the
// device in the registry and put its certificate on the CRL.
func newDeviceRevokeCmd() *cobra.Command {
	var certsDir string
	cmd := &cobra.Command{
		Use:   "revoke ID --certs DIR",
		Short: "Revoke a device: disable it and add its certificate to DIR/crl.pem",
		Long: `revoke disables the device in the registry (a running gateway rejects its
messages within its registry refresh interval) and adds its certificate,
DIR/devices/ID.crt, to DIR/crl.pem, the CRL signed by the CA in DIR that
Mosquitto's crlfile names. It then prints the broker restart step: the
restart loads the CRL and drops the device's open connection.

Running it again is safe: a certificate already on the CRL is left there.
A device missing from the registry (removed) still has its certificate
revoked.`,
		Example: `  iotgw device revoke sensor_001 --certs /etc/iotgw/certs --db /var/lib/iotgw/registry.db`,
		Args:    deviceIDArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if id == pki.GatewayIdentity {
				return usagef("device id %q is reserved: it is the gateway's identity at the broker", id)
			}
			if strings.HasPrefix(id, ".") { // "..": a path outside devices/ (issue 9, finding 7)
				return usagef("bad device id %q: %v", id, pki.ErrInvalidDeviceID)
			}
			if !cmd.Flags().Changed("certs") {
				return usagef("device revoke: --certs DIR is required (the PKI directory with ca.key)")
			}
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			err := withRegistry(cmd, false, func(ctx context.Context, r *registry.Registry) error {
				return revokeInRegistry(cmd, r, id)
			})
			switch {
			case errors.Is(err, registry.ErrNotFound):
				fmt.Fprintf(errOut, "device %s is not in the registry %s; revoking its certificate anyway\n", id, registryName(cmd))
			case err != nil:
				return err
			default:
				fmt.Fprintf(out, "revoked device %s in the registry (disabled; device enable refuses it)\n", id)
			}
			rev, err := pki.Revoke(certsDir, id, time.Now())
			switch {
			case errors.Is(err, pki.ErrAlreadyRevoked):
				fmt.Fprintf(out, "certificate of %s is already on %s\n", id, pki.Paths(certsDir).CRL)
			case errors.Is(err, fs.ErrNotExist):
				crt, _ := pki.DeviceCert(certsDir, id)
				return fmt.Errorf("no certificate %s to revoke (was it issued from another PKI directory?)", crt)
			case err != nil:
				return err
			default:
				fmt.Fprintf(out, "revoked certificate of %s (serial %x) in %s\n", id, rev.Serial, rev.CRL)
			}
			_, err = fmt.Fprintln(out, mosquittoRestartStep)
			return err
		},
	}
	cmd.Flags().StringVar(&certsDir, "certs", "certs", "PKI directory made by \"iotgw pki init\" (holds ca.key and crl.pem)")
	return cmd
}

// revokeInRegistry is the registry half of a revocation, in one place: the
// device is disabled and marked revoked (device enable then refuses it),
// and the revocation is recorded in the audit trail.
func revokeInRegistry(cmd *cobra.Command, r *registry.Registry, id string) error {
	if err := r.Revoke(cmd.Context(), id); err != nil {
		return err
	}
	return recordCmd(cmd, "device.revoke", id, 1)
}

// registryName names the registry of cmd in messages.
func registryName(cmd *cobra.Command) string {
	if s, err := storeOf(cmd); err == nil {
		return s.String()
	}
	return registryPath(cmd)
}
