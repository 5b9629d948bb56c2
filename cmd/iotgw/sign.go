package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/envelope"
)

func init() { commands = append(commands, newSignCmd) }

// secretSource is the pair of flags that say where a secret comes from.
// Secrets never come from a flag's value.
type secretSource struct {
	stdin bool
	file  string
}

func (s *secretSource) addFlags(cmd *cobra.Command, stdinHelp string) {
	cmd.Flags().BoolVar(&s.stdin, "secret-stdin", false, stdinHelp)
	cmd.Flags().StringVar(&s.file, "secret-file", "", "read the secret from the first line of this file")
}

// read returns the secret and the reader holding the rest of stdin: after
// the secret's line with --secret-stdin, all of it with --secret-file.
func (s *secretSource) read(cmd *cobra.Command) ([]byte, io.Reader, error) {
	switch {
	case s.stdin && s.file != "":
		return nil, nil, usagef("give one of --secret-stdin and --secret-file, not both")
	case s.stdin:
		secret, rest, err := readSecretLine(cmd.InOrStdin())
		return []byte(secret), rest, err
	case s.file != "":
		f, err := os.Open(s.file)
		if err != nil {
			return nil, nil, err // *PathError: "open PATH: no such file or directory"
		}
		defer f.Close()
		secret, _, err := readSecretLine(f)
		if err != nil {
			return nil, nil, usagef("no secret on the first line of %s", s.file)
		}
		return []byte(secret), cmd.InOrStdin(), nil
	}
	return nil, nil, usagef("the secret is required: give --secret-stdin or --secret-file (never a flag value)")
}

func newSignCmd() *cobra.Command {
	var (
		device, payload, messageID string
		timestamp, counter         int64
		secret                     secretSource
		reply                      bool
	)
	cmd := &cobra.Command{
		Use:   "sign --device ID (--secret-stdin | --secret-file PATH) [--reply] [--payload JSON] [--timestamp N | --counter N] [--message-id UUID]",
		Short: "Print a signed uplink message, as a device would publish it",
		Long: `sign prints one signed message on one line, ready to publish (QoS 1) on
device/<ID>/data. The payload is signed and sent byte for byte as given
(surrounding whitespace removed); it must be valid JSON. The timestamp
defaults to now and the message id to a random UUID. See docs/PROTOCOL.md.

--counter N signs a counter-mode message (docs/PROTOCOL.md, section 2a)
with counter N instead of a timestamp, for a device registered with
--freshness counter.

--reply signs a downlink instead, as the gateway signs replies and notices
(with the downlink key derived from the secret), for testing a device's
reply verifier.`,
		Example: `  iotgw sign --device sensor_001 --payload '{"temperature":22.5}' --secret-stdin < sensor_001.secret
  printf '%s\n' "$SECRET" | iotgw sign --device sensor_001 --secret-stdin | iotgw verify --secret-file sensor_001.secret`,
		Args: noArguments,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !envelope.ValidDeviceID(device) {
				return usagef("--device: bad device id %q: want 1-64 characters of [A-Za-z0-9_.-], not starting with a dot", device)
			}
			body := bytes.Trim([]byte(payload), " \t\r\n")
			if !json.Valid(body) {
				return usagef("--payload is not valid JSON")
			}
			useCounter := cmd.Flags().Changed("counter")
			switch {
			case useCounter && cmd.Flags().Changed("timestamp"):
				return usagef("--counter and --timestamp exclude each other: a message carries one of them")
			case useCounter && reply:
				return usagef("--counter: a downlink carries the gateway's timestamp, never a counter")
			case useCounter && (counter < 0 || counter > envelope.MaxCounter):
				return usagef("--counter: want 0 to %d, got %d", int64(envelope.MaxCounter), counter)
			case !cmd.Flags().Changed("timestamp"):
				timestamp = time.Now().Unix()
			}
			if timestamp < 0 || timestamp > 999_999_999_999 {
				return usagef("--timestamp: want Unix seconds from 0 to 999999999999, got %d", timestamp)
			}
			if messageID == "" {
				messageID = string(envelope.NewMessageID())
			} else if !envelope.ValidMessageID([]byte(messageID)) {
				return usagef("--message-id: want a canonical lowercase UUID such as 550e8400-e29b-41d4-a716-446655440000")
			}
			key, _, err := secret.read(cmd)
			if err != nil {
				return err
			}
			if reply {
				key = envelope.DownlinkKey(key)
			}
			e := envelope.New(key, device, timestamp, messageID, body)
			if useCounter {
				e = envelope.NewCounter(key, device, counter, messageID, body)
			}
			raw := envelope.AppendJSON(nil, &e)
			// The strict parser catches what json.Valid allows (invalid UTF-8);
			// size and depth are the gateway's settings, not checked here.
			if _, err := envelope.Parse(raw, envelope.Limits{MaxBytes: len(raw), MaxDepth: 1000}); err != nil {
				return usagef("--payload: %v", err)
			}
			_, err = cmd.OutOrStdout().Write(append(raw, '\n'))
			return err
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	f := cmd.Flags()
	f.StringVar(&device, "device", "", "device id (required)")
	f.StringVar(&payload, "payload", "{}", "payload JSON, signed and sent byte for byte")
	f.Int64Var(&timestamp, "timestamp", 0, "timestamp in Unix seconds (default now)")
	f.Int64Var(&counter, "counter", 0, "sign a counter-mode message with this counter instead of a timestamp")
	f.StringVar(&messageID, "message-id", "", "message id, a lowercase UUID (default a random one)")
	secret.addFlags(cmd, "read the secret from the first line of stdin")
	f.BoolVar(&reply, "reply", false, "sign a downlink (reply or notice) with the downlink key, as the gateway does")
	return cmd
}
