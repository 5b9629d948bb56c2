package sim

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

	"github.com/iotgw/iotgw/pkg/device"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/pki"
)

// Options are what every simulation shares: where the broker is, the
// devices' certificates and their secrets.
type Options struct {
	// Broker is the broker URL (ssl://, tls:// or mqtts://).
	Broker string
	// Certs is the PKI directory of "iotgw pki init" (ca.crt,
	// devices/<id>.crt and .key).
	Certs string
	// ConnectTimeout bounds each MQTT connection attempt.
	ConnectTimeout time.Duration
	// Secrets holds each device's shared secret, by device id.
	Secrets map[string][]byte
	// SecretsFrom names where Secrets came from, for the error that names
	// a device without one.
	SecretsFrom string
}

// ErrFailed is returned when a simulation ran but its checks failed (the
// CLI's exit status 1).
var ErrFailed = errors.New("sim: checks failed")

// brokerURL returns the broker URL in the scheme Paho understands.
func (o *Options) brokerURL() string {
	for _, p := range []string{"tls://", "mqtts://"} {
		if s, ok := strings.CutPrefix(o.Broker, p); ok {
			return "ssl://" + s
		}
	}
	return o.Broker
}

// fleet is what every simulated device shares: the CA and the secrets.
type fleet struct {
	opts    *Options
	roots   *x509.CertPool
	secrets map[string][]byte
}

// openFleet loads the CA certificate and the secrets of ids (all of them
// must be found).
func openFleet(o *Options, ids []string) (*fleet, error) {
	caFile := pki.Paths(o.Certs).CACert
	ca, err := os.ReadFile(caFile) //nolint:gosec // G304: the operator names the certs directory (--certs); reading it is the point
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("load CA: no PEM certificate in %s", caFile)
	}
	secrets := o.Secrets
	var missing []string
	for _, id := range ids {
		if _, ok := secrets[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		src := o.SecretsFrom
		more := ""
		if len(missing) > 5 {
			more = fmt.Sprintf(" and %d more", len(missing)-5)
			missing = missing[:5]
		}
		return nil, fmt.Errorf("no secret in %s for %s%s", src, strings.Join(missing, ", "), more)
	}
	return &fleet{opts: o, roots: roots, secrets: secrets}, nil
}

// ReadSecretsFile reads a secrets file: "<id> <secret>" lines; blank lines
// and lines starting with # are ignored.
func ReadSecretsFile(path string) (map[string][]byte, error) {
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
	crt, key := pki.DeviceCert(f.opts.Certs, id)
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return nil, fmt.Errorf("load certificate of %s (iotgw pki issue %s --dir %s): %w", id, id, f.opts.Certs, err)
	}
	cfg.Certificates = []tls.Certificate{pair}
	return cfg, nil
}

// device connects device id with its certificate through pkg/device:
// signed messages, the response topic subscribed before it returns, and
// every downlink verified with the device's downlink key and passed to
// onDownlink; with a nil onDownlink the device only publishes (no
// subscription). reconnect lets Paho reconnect after a lost connection.
func (f *fleet) device(ctx context.Context, id string, secret []byte, reconnect bool, onDownlink func(*device.Reply, error), opts ...func(*device.Config)) (*device.Device, error) {
	cfg, err := f.tlsConfig(id)
	if err != nil {
		return nil, err
	}
	c := device.Config{
		Broker:               f.opts.Broker,
		TLS:                  cfg,
		DeviceID:             id,
		Secret:               secret,
		ConnectTimeout:       f.opts.ConnectTimeout,
		NoReconnect:          !reconnect,
		MaxReconnectInterval: 2 * time.Second,
		OnDownlink:           onDownlink,
		PublishOnly:          onDownlink == nil,
		// Batches each connection's packets into fewer TLS records and
		// system calls under load, as the gateway does.
		OpenConnection: mqttio.OpenTLS(cfg, f.opts.ConnectTimeout),
	}
	for _, o := range opts {
		o(&c)
	}
	return device.Dial(ctx, c)
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
func (o *Options) dial(ctx context.Context, co connectOptions) (mqtt.Client, error) {
	subscribed := make(chan error, 1)
	opts := mqtt.NewClientOptions().
		AddBroker(o.brokerURL()).
		SetClientID(co.ClientID).
		SetTLSConfig(co.TLS).
		// Batches each connection's packets into fewer TLS records and
		// system calls under load, as the gateway does.
		SetCustomOpenConnectionFn(mqttio.OpenTLS(co.TLS, o.ConnectTimeout)).
		SetProtocolVersion(4). // MQTT 3.1.1, without Paho's fallback to 3.1 and a second attempt
		SetCleanSession(!co.Persistent).
		SetOrderMatters(false).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(o.ConnectTimeout).
		SetWriteTimeout(o.ConnectTimeout).
		SetAutoReconnect(false).
		SetConnectRetry(false)
	if co.Subscribe != "" {
		opts.SetOnConnectHandler(func(c mqtt.Client) {
			t := c.Subscribe(co.Subscribe, 1, co.OnMessage)
			go func() {
				var err error
				switch {
				case !t.WaitTimeout(o.ConnectTimeout):
					err = fmt.Errorf("subscribe %s: no SUBACK after %v", co.Subscribe, o.ConnectTimeout)
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
