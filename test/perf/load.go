package perf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/iotgw/iotgw/pkg/sim"
)

// LoadSpec is one `iotgw sim load` invocation.
type LoadSpec struct {
	// Devices publish, DeviceID(1..Devices), each on its own connection.
	Devices int
	// Messages is the number of messages per device.
	Messages int
	// Rate is the total paced rate in msg/s; 0 is unpaced.
	Rate float64
	// Replies makes every device subscribe to its replies, verify each and
	// wait for one per message (--expect-replies).
	Replies bool
	// Registry is the registry file the devices' secrets are read from.
	Registry string
}

// LoadResult is one finished load run.
type LoadResult struct {
	sim.LoadSummary
	// CPU is the load generator's user + system time, connection set-up
	// (TLS handshakes) included.
	CPU time.Duration
}

// Load runs `iotgw sim load` against the rig's broker and returns its
// summary. It returns an error when the process cannot run or prints no
// summary; a summary whose checks failed (sim exits 1) is returned with
// a nil error, for the caller to judge.
func (r *Rig) Load(ctx context.Context, s LoadSpec) (LoadResult, error) {
	return r.load(ctx, s, nil)
}

// load is Load, calling started with the process id once it runs.
func (r *Rig) load(ctx context.Context, s LoadSpec, started func(pid int)) (LoadResult, error) {
	args := []string{"sim", "load",
		"--broker", r.Broker.Addr, "--certs", r.Certs, "--db", s.Registry,
		"--devices", strconv.Itoa(s.Devices), "--id-prefix", DevicePrefix,
		"--messages", strconv.Itoa(s.Messages), "--rate", strconv.FormatFloat(s.Rate, 'f', -1, 64),
		"--dial-parallel", "64", "--connect-timeout", "30s", "--publish-timeout", "60s",
		"--json"}
	if s.Replies {
		args = append(args, "--expect-replies", "--reply-timeout", "120s")
	}
	cmd := exec.CommandContext(ctx, r.Bin, args...)
	cmd.Env = append(os.Environ(), "IOTGW_SECURITY_KEK_FILE="+r.KEKFile) // the registry is sealed
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Start()
	if err == nil {
		if started != nil {
			started(cmd.Process.Pid)
		}
		err = cmd.Wait()
	}
	var res LoadResult
	if cmd.ProcessState != nil {
		res.CPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if jerr := json.Unmarshal(stdout.Bytes(), &res.LoadSummary); jerr != nil {
		return res, fmt.Errorf("iotgw %s: %w\nstdout: %s\nstderr: %s",
			strings.Join(args, " "), errors.Join(err, fmt.Errorf("summary: %w", jerr)), lastBytes(stdout.Bytes(), 2048), lastBytes(stderr.Bytes(), 2048))
	}
	return res, nil
}

// check returns an error unless every message was acknowledged by the
// broker and, with replies, every reply arrived, verified and said 2xx.
func (l LoadResult) check(s LoadSpec) error {
	want := int64(s.Devices) * int64(s.Messages)
	switch {
	case l.Interrupted:
		return fmt.Errorf("load generator interrupted")
	case l.Acked != want || l.PublishErrors > 0:
		return fmt.Errorf("load generator: %d of %d acknowledged, %d publish errors (first: %s)", l.Acked, want, l.PublishErrors, l.FirstError)
	case !s.Replies:
		return nil
	case l.Replies == nil:
		return fmt.Errorf("load generator printed no reply summary")
	}
	rp := l.Replies
	var rejected int64
	for _, n := range rp.Rejected {
		rejected += n
	}
	if rp.OK != want || rp.Missing != 0 || rp.BadSignature != 0 || rp.Unmatched != 0 || rp.OtherStatus != 0 || rejected != 0 {
		return fmt.Errorf("replies: want %d verified 2xx: got ok %d, missing %d, bad signature %d, unmatched %d, other status %d, rejected %v",
			want, rp.OK, rp.Missing, rp.BadSignature, rp.Unmatched, rp.OtherStatus, rp.Rejected)
	}
	return nil
}
