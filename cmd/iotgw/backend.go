package main

import (
	"github.com/spf13/cobra"

	"github.com/iotgw/iotgw/pkg/samplebackend"
)

func init() { commands = append(commands, newBackendCmd) }

func newBackendCmd() *cobra.Command {
	o := samplebackend.DefaultOptions()
	cmd := &cobra.Command{
		Use:   "backend [--listen ADDR] [--log FILE] [--fail-status N --fail-for D] [--delay D] [--bearer-token-file F] [--signing-key-file F [--signature-scheme v2|v1]]",
		Short: "Run a sample HTTP backend that records what the gateway forwards",
		Long: `backend is a small HTTP server standing in for the real backend, for the
demo and the end-to-end tests.

POST to any path (the gateway uses /ingest/{device_id}) is recorded and
answered 200 {"ok":true,"received":"<message id>"} (the Idempotency-Key,
else X-Message-ID). With --log, each
request appends one JSON line to FILE:

  {"time":"<RFC 3339>","path_device_id":"<last path segment>","device_id":"<X-Device-ID>",
   "message_id":"<message id>","timestamp":"<X-Device-Timestamp>",
   "idempotency_key":"<Idempotency-Key>","status":200,"body":<request body>}

"status" is what the backend answered, so count lines with status 200 to
count deliveries. "body" is the request body embedded as JSON (as a string
when it is not valid JSON).

GET /stats returns counters as JSON: requests, ok, failed, unique_messages,
duplicates (200s for a message id already answered 200) and by_device;
GET /stats?message_id=ID adds "message_ok", that id's 200 count.

POST /batch takes the gateway's batch mode (backend.batch_max > 1,
backend.batch_url = http://ADDR/batch): each item is recorded as above and
answered in a JSON array of {"status","body"}.

Fault simulation: --fail-for D answers --fail-status (default 503) to every
POST for D after start; POST /fail?for=D[&status=N] starts such an outage
at run time (for=0 ends it). --delay D waits D before answering each POST.
GET /stats and POST /fail need the same credentials as a delivery (below):
the token, and a signature over the method, the target and the timestamp
with an empty body. Without --bearer-token-file or --signing-key-file
anyone who reaches the backend can use them (and POST deliveries): keep
it on loopback or a private network.

Backend trust (docs/PROTOCOL.md 4b): with --bearer-token-file every POST
must carry "Authorization: Bearer <the file's token>"; with
--signing-key-file every POST must carry a valid X-Iotgw-Signature of
--signature-scheme (v2, the default, signs every header the gateway sets;
v1, of a gateway with backend.signature_scheme v1, leaves
X-Device-Timestamp and X-Iotgw-Seq unsigned), whose X-Iotgw-Timestamp is
within --signing-max-skew of now. Anything else
is answered 401, counted in /stats as "unauthorized", not recorded, and
logged as one line on stderr naming the reason. The files must be chmod
600, as the gateway's (backend.bearer_token_file, backend.signing_key_file).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.Validate(); err != nil {
				return usagef("backend: %v", err) // a usage error (exit 2) before any file is read
			}
			return samplebackend.Run(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usagef("%v", err) })
	f := cmd.Flags()
	f.StringVar(&o.Listen, "listen", o.Listen, "address to listen on (port 0 picks a free one; the address is printed)")
	f.StringVar(&o.LogPath, "log", "", "append one JSON line per request to this file")
	f.IntVar(&o.FailStatus, "fail-status", o.FailStatus, "status answered during a simulated outage")
	f.DurationVar(&o.FailFor, "fail-for", 0, "simulate an outage for this long after start (0: none)")
	f.DurationVar(&o.Delay, "delay", 0, "wait this long before answering each POST")
	f.StringVar(&o.BearerTokenFile, "bearer-token-file", "", "require Authorization: Bearer <token in this file> (chmod 600)")
	f.StringVar(&o.SigningKeyFile, "signing-key-file", "", "require a valid X-Iotgw-Signature made with the key in this file (chmod 600)")
	f.StringVar(&o.SigningScheme, "signature-scheme", o.SigningScheme, "the scheme X-Iotgw-Signature must use: v2 or v1 (the gateway's backend.signature_scheme)")
	f.DurationVar(&o.SigningMaxSkew, "signing-max-skew", o.SigningMaxSkew, "how far X-Iotgw-Timestamp may be from now")
	return cmd
}
