package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/device"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/storage"
)

func init() { commands = append(commands, newSimCmd) }

// simOptions are the flags shared by every "iotgw sim" subcommand.
type simOptions struct {
	broker         string
	certs          string
	db             string
	secretsFile    string
	connectTimeout time.Duration
	// shared: neither --db nor --secrets-file, and the environment names
	// a shared registry (storage.engine postgres); set by check.
	shared bool
}

func newSimCmd() *cobra.Command {
	var o simOptions
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulated devices: the attack demo and a load generator, over real MQTT with mutual TLS",
		Long: `sim plays devices against a running broker and gateway. Each simulated device
connects with its own certificate (--certs DIR/devices/<id>.crt and .key,
trusting DIR/ca.crt) and signs its messages with its shared secret, read
from the registry (--db, opened read-only; or, with neither flag, the
shared registry of IOTGW_STORAGE_ENGINE=postgres and IOTGW_STORAGE_DSN) or
from --secrets-file (lines "<id> <secret>"; blank lines and lines
starting with # are ignored).

  iotgw sim demo   valid readings, then one attack at a time, with a verdict table
  iotgw sim load   many devices publishing signed QoS 1 messages, with a summary`,
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	f := cmd.PersistentFlags()
	f.StringVar(&o.broker, "broker", "ssl://127.0.0.1:8883", "broker URL (ssl://, tls:// or mqtts://)")
	f.StringVar(&o.certs, "certs", "certs", "PKI directory from \"iotgw pki init\" (ca.crt, devices/<id>.crt|.key)")
	f.StringVar(&o.db, "db", "", "device registry SQLite file to read the secrets from (read-only)")
	f.StringVar(&o.secretsFile, "secrets-file", "", "file of \"<id> <secret>\" lines, instead of --db")
	f.DurationVar(&o.connectTimeout, "connect-timeout", 5*time.Second, "bound on each MQTT connection attempt")
	cmd.AddCommand(newSimDemoCmd(&o), newSimLoadCmd(&o))
	return cmd
}

// check validates the shared flags.
func (o *simOptions) check() error {
	if o.db == "" && o.secretsFile == "" {
		// The shared registry of the environment's storage section
		// (IOTGW_STORAGE_ENGINE=postgres, IOTGW_STORAGE_DSN) is the third source.
		c, err := config.LoadUnvalidated("")
		if err != nil { // a mistyped IOTGW_* variable, say: name it
			return usagef("sim: %v", err)
		}
		o.shared = c.Storage.Shared()
	}
	if (o.db == "") == (o.secretsFile == "") && !o.shared {
		return usagef("sim: give exactly one of --db and --secrets-file")
	}
	if !strings.HasPrefix(o.broker, "ssl://") && !strings.HasPrefix(o.broker, "tls://") && !strings.HasPrefix(o.broker, "mqtts://") {
		return usagef("sim: --broker %q is not a TLS URL like ssl://127.0.0.1:8883", o.broker)
	}
	if o.connectTimeout <= 0 {
		return usagef("sim: --connect-timeout must be positive")
	}
	return nil
}

// brokerURL returns the broker URL in the scheme Paho understands.
func (o *simOptions) brokerURL() string {
	for _, p := range []string{"tls://", "mqtts://"} {
		if s, ok := strings.CutPrefix(o.broker, p); ok {
			return "ssl://" + s
		}
	}
	return o.broker
}

// fleet is what every simulated device shares: the CA and the secrets.
type fleet struct {
	opts    *simOptions
	roots   *x509.CertPool
	secrets map[string][]byte
}

// openFleet loads the CA certificate and the secrets of ids (all of them
// must be found).
func openFleet(ctx context.Context, o *simOptions, ids []string) (*fleet, error) {
	caFile := pki.Paths(o.certs).CACert
	ca, err := os.ReadFile(caFile) //nolint:gosec // G304: the operator names the certs directory (--certs); reading it is the point
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("load CA: no PEM certificate in %s", caFile)
	}
	var secrets map[string][]byte
	if o.db != "" || o.shared {
		secrets, err = secretsFromDB(ctx, o.db)
	} else {
		secrets, err = secretsFromFile(o.secretsFile)
	}
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, id := range ids {
		if _, ok := secrets[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		src := o.db
		switch {
		case o.shared:
			src = "the shared registry (storage.dsn)"
		case src == "":
			src = o.secretsFile
		}
		more := ""
		if len(missing) > 5 {
			more = fmt.Sprintf(" and %d more", len(missing)-5)
			missing = missing[:5]
		}
		return nil, fmt.Errorf("no secret in %s for %s%s", src, strings.Join(missing, ", "), more)
	}
	return &fleet{opts: o, roots: roots, secrets: secrets}, nil
}

// secretsFromDB reads every device's newest secret from the registry file
// (opened read-only, so a running gateway is not disturbed), or with
// path "" from the shared registry of $IOTGW_STORAGE_ENGINE and
// $IOTGW_STORAGE_DSN. A sealed registry needs its KEK: security.kek_file
// from $IOTGW_SECURITY_KEK_FILE.
func secretsFromDB(ctx context.Context, path string) (map[string][]byte, error) {
	c, err := config.LoadUnvalidated("")
	if err != nil {
		return nil, err
	}
	kek, err := c.Security.LoadKEK()
	if err != nil {
		return nil, err
	}
	return storage.DeviceSecrets(ctx, c.Storage, path, kek)
}

// secretsFromFile reads "<id> <secret>" lines.
func secretsFromFile(path string) (map[string][]byte, error) {
	f, err := os.Open(path) //nolint:gosec // G304: the operator names this file (--secrets); reading it is the point
	if err != nil {
		return nil, fmt.Errorf("secrets file: %w", err)
	}
	defer f.Close()
	out := map[string][]byte{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			i = len(line)
		}
		id, secret := line[:i], strings.TrimSpace(line[i:])
		if secret == "" || !envelope.ValidDeviceID(id) {
			return nil, fmt.Errorf("secrets file %s:%d: want \"<device id> <secret>\"", path, n)
		}
		out[id] = []byte(secret)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("secrets file %s: %w", path, err)
	}
	return out, nil
}

// tlsConfig returns the client TLS configuration of device id, or one
// with no client certificate when id is "".
func (f *fleet) tlsConfig(id string) (*tls.Config, error) {
	cfg := &tls.Config{RootCAs: f.roots, MinVersion: tls.VersionTLS12}
	if id == "" {
		return cfg, nil
	}
	crt, key := pki.DeviceCert(f.opts.certs, id)
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return nil, fmt.Errorf("load certificate of %s (iotgw pki issue %s --dir %s): %w", id, id, f.opts.certs, err)
	}
	cfg.Certificates = []tls.Certificate{pair}
	return cfg, nil
}

// device connects device id with its certificate through pkg/device:
// signed messages, the response topic subscribed before it returns, and
// every downlink verified with the device's downlink key and passed to
// onDownlink; with a nil onDownlink the device only publishes (no
// subscription). reconnect lets Paho reconnect after a lost connection.
func (f *fleet) device(ctx context.Context, id string, secret []byte, reconnect bool, onDownlink func(*device.Reply, error)) (*device.Device, error) {
	cfg, err := f.tlsConfig(id)
	if err != nil {
		return nil, err
	}
	return device.Dial(ctx, device.Config{
		Broker:               f.opts.broker,
		TLS:                  cfg,
		DeviceID:             id,
		Secret:               secret,
		ConnectTimeout:       f.opts.connectTimeout,
		NoReconnect:          !reconnect,
		MaxReconnectInterval: 2 * time.Second,
		OnDownlink:           onDownlink,
		PublishOnly:          onDownlink == nil,
		// Batches each connection's packets into fewer TLS records and
		// system calls under load, as the gateway does.
		OpenConnection: mqttio.OpenTLS(cfg, f.opts.connectTimeout),
	})
}

// connectOptions configures dial, the raw Paho connection of the demo
// rows that play what no device does (no certificate, a foreign CA, a
// chosen client id); every device connects through fleet.device.
type connectOptions struct {
	// ClientID is the MQTT client id.
	ClientID string
	// TLS is the client TLS configuration.
	TLS *tls.Config
	// Persistent asks for a persistent session (clean session off).
	Persistent bool
	// Subscribe, when set, is subscribed at QoS 1 with OnMessage on every
	// (re)connection; dial returns once the first SUBACK granted it.
	Subscribe string
	// OnMessage receives the subscription's messages; it must not block.
	OnMessage mqtt.MessageHandler
}

// dial connects one raw client, with a clean session unless co.Persistent.
func (o *simOptions) dial(ctx context.Context, co connectOptions) (mqtt.Client, error) {
	subscribed := make(chan error, 1)
	opts := mqtt.NewClientOptions().
		AddBroker(o.brokerURL()).
		SetClientID(co.ClientID).
		SetTLSConfig(co.TLS).
		// Batches each connection's packets into fewer TLS records and
		// system calls under load, as the gateway does.
		SetCustomOpenConnectionFn(mqttio.OpenTLS(co.TLS, o.connectTimeout)).
		SetProtocolVersion(4). // MQTT 3.1.1, without Paho's fallback to 3.1 and a second attempt
		SetCleanSession(!co.Persistent).
		SetOrderMatters(false).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(o.connectTimeout).
		SetWriteTimeout(o.connectTimeout).
		SetAutoReconnect(false).
		SetConnectRetry(false)
	if co.Subscribe != "" {
		opts.SetOnConnectHandler(func(c mqtt.Client) {
			t := c.Subscribe(co.Subscribe, 1, co.OnMessage)
			go func() {
				var err error
				switch {
				case !t.WaitTimeout(o.connectTimeout):
					err = fmt.Errorf("subscribe %s: no SUBACK after %v", co.Subscribe, o.connectTimeout)
				case t.Error() != nil:
					err = fmt.Errorf("subscribe %s: %w", co.Subscribe, t.Error())
				case t.(*mqtt.SubscribeToken).Result()[co.Subscribe] == 0x80:
					err = fmt.Errorf("subscribe %s: refused by the broker", co.Subscribe)
				}
				select {
				case subscribed <- err:
				default:
				}
			}()
		})
	}
	c := mqtt.NewClient(opts)
	t := c.Connect()
	select {
	case <-t.Done():
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, ctx.Err()
	}
	if err := t.Error(); err != nil {
		return nil, err
	}
	if co.Subscribe == "" {
		return c, nil
	}
	select {
	case err := <-subscribed:
		if err != nil {
			c.Disconnect(0)
			return nil, err
		}
		return c, nil
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, ctx.Err()
	}
}

// splitIDs parses a comma-separated list of device ids.
func splitIDs(flag, s string) ([]string, error) {
	var ids []string
	seen := map[string]bool{}
	for _, id := range strings.Split(s, ",") {
		id = strings.TrimSpace(id)
		if id == "" {
			continue
		}
		if !envelope.ValidDeviceID(id) {
			return nil, usagef("sim: %s: %q is not a device id (1-64 characters of [A-Za-z0-9_.-])", flag, id)
		}
		if seen[id] {
			return nil, usagef("sim: %s: %q given twice", flag, id)
		}
		seen[id] = true
		ids = append(ids, id)
	}
	return ids, nil
}

// errSimFailed is returned when the simulation ran but its checks failed
// (exit status 1).
var errSimFailed = errors.New("sim: checks failed")

// percentiles returns the p-th percentiles (0-100) of sorted d in
// milliseconds.
func percentiles(d []time.Duration, ps ...float64) []float64 {
	out := make([]float64, len(ps))
	if len(d) == 0 {
		return out
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	for i, p := range ps {
		k := int(p / 100 * float64(len(d)-1))
		out[i] = float64(d[k].Microseconds()) / 1000
	}
	return out
}
