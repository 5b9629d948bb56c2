// Command iotgw is the SecureIoTGateway binary: the gateway (serve), device
// registry and PKI tools, signing helpers, a device simulator and a sample
// backend. Each subcommand lives in a file of its own.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// commands holds the subcommand constructors; each file registers its own.
var commands []func() *cobra.Command

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	os.Exit(exitCode(err))
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "iotgw",
		Short:         "SecureIoTGateway: signed, replay-protected MQTT → HTTP",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, c := range commands {
		root.AddCommand(c())
	}
	setVersionFlag(root) // iotgw --version, as `iotgw version`
	return root
}

// exitCode prints err as one line on stderr and maps it to an exit
// status: 0 success, 1 a verdict or runtime failure, 2 bad usage.
func exitCode(err error) int { return report(os.Stderr, err) }

// report is exitCode writing to w. A verdict the command already printed
// (a *rejectedError) adds nothing: its reason is on stdout once.
func report(w io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var re *rejectedError
	if errors.As(err, &re) {
		return 1
	}
	var ue *usageError
	fmt.Fprintln(w, "iotgw: "+err.Error())
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// usageError marks bad arguments (exit status 2).
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return &usageError{fmt.Errorf(format, a...)} }
