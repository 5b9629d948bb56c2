package main

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/config"
	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/mqttio"
	"github.com/iotgw/iotgw/pkg/sim"
	"github.com/iotgw/iotgw/pkg/storage"
)

func init() { commands = append(commands, newSimCmd) }

// simOptions are the flags shared by every "iotgw sim" subcommand.
type simOptions struct {
	sim.Options
	db          string
	secretsFile string
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
	f.StringVar(&o.Broker, "broker", "ssl://127.0.0.1:8883", "broker URL (ssl://, tls:// or mqtts://)")
	f.StringVar(&o.Certs, "certs", "certs", "PKI directory from \"iotgw pki init\" (ca.crt, devices/<id>.crt|.key)")
	f.StringVar(&o.db, "db", "", "device registry SQLite file to read the secrets from (read-only)")
	f.StringVar(&o.secretsFile, "secrets-file", "", "file of \"<id> <secret>\" lines, instead of --db")
	f.DurationVar(&o.ConnectTimeout, "connect-timeout", 5*time.Second, "bound on each MQTT connection attempt")
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
		o.shared = !c.Storage.FilesLocal()
	}
	if (o.db == "") == (o.secretsFile == "") && !o.shared {
		return usagef("sim: give exactly one of --db and --secrets-file")
	}
	if !strings.HasPrefix(o.Broker, "ssl://") && !strings.HasPrefix(o.Broker, "tls://") && !strings.HasPrefix(o.Broker, "mqtts://") {
		return usagef("sim: --broker %q is not a TLS URL like ssl://127.0.0.1:8883", o.Broker)
	}
	if o.ConnectTimeout <= 0 {
		return usagef("sim: --connect-timeout must be positive")
	}
	return nil
}

// loadSecrets fills o.Secrets and o.SecretsFrom from --db, the shared
// registry or --secrets-file.
func (o *simOptions) loadSecrets(ctx context.Context) error {
	var err error
	switch {
	case o.db != "" || o.shared:
		o.SecretsFrom = o.db
		if o.shared {
			o.SecretsFrom = "the shared registry (storage.dsn)"
		}
		o.Secrets, err = secretsFromDB(ctx, o.db)
	default:
		o.SecretsFrom = o.secretsFile
		o.Secrets, err = sim.ReadSecretsFile(o.secretsFile)
	}
	return err
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

func newSimDemoCmd(so *simOptions) *cobra.Command {
	var o sim.DemoOptions
	var devices string
	cmd := &cobra.Command{
		Use:   "demo --db FILE|--secrets-file FILE [--devices A,B] [--intruder ID] [--counter-device ID] [--backend-log FILE|--backend-stats URL] [--metrics URL]",
		Short: "Send valid readings, then each attack one at a time, and print a verdict table",
		Long: `demo connects the first two --devices (their certificates and registered
secrets are needed), sends --readings valid readings from each, then runs
each attack one at a time and waits, for at most --timeout, for its outcome
on the device's own device/<id>/response, checking every reply's signature
with the device's downlink key. Scenarios that expect silence wait until a later
valid message from the same device has been answered, then --quiet more.

With --backend-log (the file of "iotgw backend --log") or --backend-stats
(its /stats URL) every row also checks what reached the backend; with
--metrics (the gateway's /metrics URL) the unregistered-device row checks
iotgw_messages_rejected_total{reason="unknown_device"}.

It prints scenario | expected | observed | result and exits 1 if any row
fails. docs/DEMO.md explains each row.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := so.check(); err != nil {
				return err
			}
			ids, err := splitIDs("--devices", devices)
			if err != nil {
				return err
			}
			if len(ids) != 2 {
				return usagef("sim demo: --devices wants two device ids, got %d", len(ids))
			}
			if o.Readings < 1 || o.Timeout <= 0 || o.Quiet < 0 {
				return usagef("sim demo: --readings ≥ 1, --timeout > 0 and --quiet ≥ 0 are required")
			}
			if o.BackendLog != "" && o.BackendStats != "" {
				return usagef("sim demo: give at most one of --backend-log and --backend-stats")
			}
			if o.Intruder != "" && !envelope.ValidDeviceID(o.Intruder) {
				return usagef("sim demo: --intruder %q is not a device id", o.Intruder)
			}
			if o.CounterDevice != "" && !envelope.ValidDeviceID(o.CounterDevice) {
				return usagef("sim demo: --counter-device %q is not a device id", o.CounterDevice)
			}
			if err := so.loadSecrets(cmd.Context()); err != nil {
				return err
			}
			return sim.Demo(cmd.Context(), &so.Options, o, ids, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&devices, "devices", "sensor_001,sensor_002", "the two registered devices that play the scenarios")
	f.StringVar(&o.Intruder, "intruder", "intruder", "a device with a certificate but no registry entry (\"\" skips that row)")
	f.IntVar(&o.Readings, "readings", 3, "valid readings sent by each device first")
	f.DurationVar(&o.Timeout, "timeout", 5*time.Second, "longest wait for each outcome")
	f.DurationVar(&o.Quiet, "quiet", time.Second, "extra wait for scenarios that expect no reply")
	f.StringVar(&o.BackendLog, "backend-log", "", "request log of \"iotgw backend --log\", to check what reached the backend")
	f.StringVar(&o.BackendStats, "backend-stats", "", "URL of the sample backend's /stats, instead of --backend-log")
	f.StringVar(&o.Metrics, "metrics", "", "URL of the gateway's /metrics, to confirm unknown_device rejections")
	f.BoolVar(&o.JSON, "json", false, "print the rows as one JSON object instead of a table")
	f.IntVar(&o.Flood, "flood", 2000, "validly signed messages the first device floods in the last row (0 skips it)")
	f.StringVar(&o.GatewayClientID, "gateway-client-id", mqttio.DefaultClientID, "the gateway's mqtt.client_id, which the takeover row asks for with the --intruder's certificate")
	f.StringVar(&o.CounterDevice, "counter-device", "", "a device registered with --freshness counter, for the counter-mode replay row (\"\" skips it)")
	return cmd
}

// loadOptions are the flags of "iotgw sim load".
type loadOptions struct {
	sim.LoadOptions
	devices     int
	deviceIDs   string
	idPrefix    string
	connections int
}

func newSimLoadCmd(so *simOptions) *cobra.Command {
	var o loadOptions
	cmd := &cobra.Command{
		Use:   "load --devices N|--device-ids A,B,... --messages M [--rate R] [--expect-replies] [--json]",
		Short: "Publish signed QoS 1 messages from many devices and report the throughput",
		Long: `load connects every device with its own certificate and connection (the
broker's ACL lets a certificate publish only on its own device/<id>/data,
so one connection cannot speak for several devices), then each device
publishes --messages signed QoS 1 messages with the payload
{"seq":<1..M>,"sent_ns":<Unix nanoseconds at send>}.

--devices N uses the ids <--id-prefix>1 .. <--id-prefix>N; each needs a
certificate (iotgw pki issue) and a registered secret (iotgw device add).
Every connection costs a TLS handshake, a socket (mind ulimit -n) and a few
goroutines here and in the broker; see docs/DEMO.md.

--rate paces the total over all devices (0: as fast as the window allows).
Each connection keeps at most --window PUBLISHes awaiting their PUBACK.
With --expect-replies each device also subscribes to device/<id>/response,
verifies every reply's signature and waits up to --reply-timeout for one
reply per acknowledged message; the summary gives reply counts and
round-trip latency (publish to verified reply). --record FILE writes
"<device_id> <message_id>" for every message the broker acknowledged.

The summary is printed as text, or with --json as one JSON object. The exit
status is 1 when a publish failed or, with --expect-replies, when a reply
was missing or failed verification.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := so.check(); err != nil {
				return err
			}
			ids, err := o.ids()
			if err != nil {
				return err
			}
			if o.Messages < 1 || o.Rate < 0 || o.Window < 1 || o.DialParallel < 1 || o.PublishTimeout <= 0 || o.ReplyTimeout <= 0 {
				return usagef("sim load: need --messages ≥ 1, --rate ≥ 0, --window ≥ 1, --dial-parallel ≥ 1 and positive timeouts")
			}
			if o.connections != 0 && o.connections != len(ids) {
				return usagef("sim load: --connections %d: every device needs its own connection (the broker ACL allows a certificate "+
					"to publish only on its own topic); issue a certificate per device and leave --connections at 0", o.connections)
			}
			if err := so.loadSecrets(cmd.Context()); err != nil {
				return err
			}
			return sim.Load(cmd.Context(), &so.Options, o.LoadOptions, ids, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.devices, "devices", 0, "number of devices, named <id-prefix>1..N")
	f.StringVar(&o.deviceIDs, "device-ids", "", "comma-separated device ids, instead of --devices")
	f.StringVar(&o.idPrefix, "id-prefix", "sim-", "prefix of the ids made by --devices")
	f.IntVar(&o.Messages, "messages", 100, "messages per device")
	f.Float64Var(&o.Rate, "rate", 0, "total messages per second over all devices (0: unpaced)")
	f.IntVar(&o.connections, "connections", 0, "connections (0: one per device, the only value the project ACL allows)")
	f.IntVar(&o.Window, "window", 64, "PUBLISHes awaiting PUBACK per connection")
	f.IntVar(&o.DialParallel, "dial-parallel", 32, "connections set up at once")
	f.DurationVar(&o.PublishTimeout, "publish-timeout", 10*time.Second, "longest wait for one PUBACK")
	f.BoolVar(&o.ExpectReplies, "expect-replies", false, "subscribe to the replies, verify and count them")
	f.DurationVar(&o.ReplyTimeout, "reply-timeout", 30*time.Second, "with --expect-replies, longest wait for the last replies")
	f.StringVar(&o.Record, "record", "", "write \"<device_id> <message_id>\" per acknowledged message to this file")
	f.BoolVar(&o.JSON, "json", false, "print the summary as one JSON object")
	return cmd
}

// ids returns the device ids from --devices or --device-ids.
func (o *loadOptions) ids() ([]string, error) {
	if (o.devices > 0) == (o.deviceIDs != "") {
		return nil, usagef("sim load: give exactly one of --devices N (N ≥ 1) and --device-ids")
	}
	if o.deviceIDs != "" {
		ids, err := splitIDs("--device-ids", o.deviceIDs)
		if err == nil && len(ids) == 0 {
			err = usagef("sim load: --device-ids is empty")
		}
		return ids, err
	}
	ids := make([]string, o.devices)
	for i := range ids {
		ids[i] = o.idPrefix + strconv.Itoa(i+1)
	}
	if last := ids[len(ids)-1]; !envelope.ValidDeviceID(last) {
		return nil, usagef("sim load: --id-prefix %q makes %q, not a device id (1-64 characters of [A-Za-z0-9_.-])", o.idPrefix, last)
	}
	return ids, nil
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
