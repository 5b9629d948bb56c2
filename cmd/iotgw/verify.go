package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

func init() { commands = append(commands, newVerifyCmd) }

// oneDevice is a KeyStore holding a single enabled device, in counter
// mode when counter is set.
type oneDevice struct {
	id      string
	secret  []byte
	counter bool
}

func (k oneDevice) Device(_ context.Context, id string) (validate.Device, error) {
	if id != k.id {
		return validate.Device{}, validate.ErrUnknownDevice
	}
	return validate.Device{Secret: k.secret, Enabled: true, Counter: k.counter}, nil
}

// rejectedError is a verdict other than valid, already printed on stdout
// with its detail: exit status 1 and nothing more on stderr.
type rejectedError struct{ reason validate.Reason }

func (e *rejectedError) Error() string { return "message rejected: " + string(e.reason) }

func newVerifyCmd() *cobra.Command {
	var (
		device string
		now    int64
		secret secretSource
		reply  bool
	)
	cfg := validate.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "verify (--secret-stdin | --secret-file PATH) [--reply] [--device ID] [--max-clock-skew 5m] [--now UNIX] < message.json",
		Short: "Check one uplink message as the gateway would (or, with --reply, one downlink as a device would)",
		Long: `verify runs the gateway's checks on one message: shape, identity, freshness,
signature (replay cannot happen with a single message). It prints "valid"
and exits 0, or prints the reason code and detail and exits 1. Bad usage
exits 2.

Where the secret comes from:
  --secret-stdin      the FIRST LINE of stdin is the secret; everything after
                      it is the message
  --secret-file PATH  the first line of PATH is the secret; all of stdin is
                      the message

One trailing newline after the message is ignored. --device is the device
id of the topic the message arrived on (device/<ID>/data); by default it is
the message's own device_id, which skips the identity check.

--reply checks a downlink (a reply or notice from device/<ID>/response)
instead: the same checks, with the signature keyed by the downlink key
derived from the secret (docs/PROTOCOL.md, section 4). A downlink checked
without --reply, or an uplink checked with it, is bad_signature.`,
		Example: `  iotgw verify --secret-file sensor_001.secret < message.json
  { cat sensor_001.secret; cat message.json; } | iotgw verify --secret-stdin --device sensor_001
  iotgw verify --reply --secret-file sensor_001.secret < reply.json`,
		Args: noArguments,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.Validate(); err != nil {
				return usagef("%v", err)
			}
			key, rest, err := secret.read(cmd)
			if err != nil {
				return err
			}
			if reply {
				key = envelope.DownlinkKey(key)
			}
			raw, err := io.ReadAll(io.LimitReader(rest, int64(cfg.MaxMessageBytes)+2))
			if err != nil {
				return fmt.Errorf("read message from stdin: %w", err)
			}
			raw = bytes.TrimSuffix(bytes.TrimSuffix(raw, []byte("\n")), []byte("\r"))
			// The message's own device (a malformed message has none, and
			// Check reports it as malformed), and its mode: a counter-mode
			// message is checked as from a counter-mode device (its bound
			// is the gateway's, not known here).
			e, _ := envelope.Parse(raw, envelope.Limits{MaxBytes: cfg.MaxMessageBytes, MaxDepth: cfg.MaxDepth})
			topic := device
			if topic == "" {
				topic = e.DeviceID
			}
			clock := time.Now
			if cmd.Flags().Changed("now") {
				clock = func() time.Time { return time.Unix(now, 0) }
			}
			v, err := validate.New(cfg, oneDevice{topic, key, e.IsCounter() && !reply}, replay.NewMemory(1, clock), clock)
			if err != nil {
				return err
			}
			res, err := v.Check(cmd.Context(), topic, raw)
			if err != nil {
				return err
			}
			if res.Accepted() {
				valid := "valid"
				if res.Envelope.IsCounter() {
					valid = fmt.Sprintf("valid (counter %d: the gateway accepts it only above the device's highest accepted counter)", res.Envelope.Counter)
				}
				_, err := fmt.Fprintln(cmd.OutOrStdout(), valid)
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Rejection.String())
			return &rejectedError{res.Rejection.Reason}
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	f := cmd.Flags()
	secret.addFlags(cmd, "read the secret from the first line of stdin; the message follows it")
	f.StringVar(&device, "device", "", "device id of the topic (default the message's device_id)")
	f.BoolVar(&reply, "reply", false, "check a downlink (reply or notice), signed with the downlink key")
	f.DurationVar(&cfg.MaxClockSkew, "max-clock-skew", cfg.MaxClockSkew, "largest allowed |now - timestamp|")
	f.Int64Var(&now, "now", 0, "check freshness against this Unix time instead of the clock")
	f.IntVar(&cfg.MaxMessageBytes, "max-message-bytes", cfg.MaxMessageBytes, "largest message accepted, in bytes")
	f.IntVar(&cfg.MaxDepth, "max-depth", cfg.MaxDepth, "deepest JSON nesting, the message itself counting as 1")
	return cmd
}

var _ validate.KeyStore = oneDevice{}
