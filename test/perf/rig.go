package perf

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/pki"
	"github.com/iotgw/iotgw/pkg/registry"
	"github.com/iotgw/iotgw/test/harness"
)

// DevicePrefix names the simulated devices: DevicePrefix1, DevicePrefix2, ...
const DevicePrefix = "bench-"

// issueWorkers is how many certificates are issued at once. pki.Issue
// spends most of its time in fsync, so more workers than cores help.
const issueWorkers = 32

// Rig is what every measurement of one run shares: the iotgw binary, a PKI
// with a certificate for each simulated device, device registries of
// several sizes (the same secrets in each), and one Mosquitto started from
// the project's mosquitto.conf and ACL.
type Rig struct {
	// Bin is the iotgw binary.
	Bin string
	// Certs is the PKI directory.
	Certs string
	// Dir holds the registries and the gateways' files.
	Dir string
	// Broker is the Mosquitto every run goes through.
	Broker *harness.Broker
	// BrokerPID is Mosquitto's process id, 0 if it was not found.
	BrokerPID int
	// Setup says what building the rig cost.
	Setup Setup
	// KEKFile seals every registry's secrets (security.kek_file), as a
	// deployment should: the gateways run with require_kek.
	KEKFile string

	kek        *registry.KEK
	registries map[int]string
}

// Setup is the cost of building a Rig, kept out of every timed section.
type Setup struct {
	// BuildSeconds is building (or finding cached) bin/iotgw.
	BuildSeconds float64 `json:"build_seconds"`
	// Devices is the number of device certificates issued.
	Devices int `json:"devices"`
	// IssueSeconds is issuing them (pki.Issue, issueWorkers at once).
	IssueSeconds float64 `json:"issue_seconds"`
	// Registered is the number of registry.Add calls over all registries.
	Registered int `json:"registered"`
	// RegisterSeconds is those calls, one autocommit INSERT each.
	RegisterSeconds float64 `json:"register_seconds"`
	// BrokerStartSeconds is starting Mosquitto until it accepts TLS.
	BrokerStartSeconds float64 `json:"broker_start_seconds"`
}

// NewRig builds a rig with certificates for devices devices and one
// registry for each size in registries (each holding DevicePrefix1..size).
// Everything is removed when the test ends.
func NewRig(t testing.TB, devices int, registries ...int) *Rig {
	t.Helper()
	r := &Rig{Dir: t.TempDir(), registries: map[int]string{}}
	hexKEK, err := registry.NewKEKHex()
	if err != nil {
		t.Fatal(err)
	}
	if r.kek, err = registry.ParseKEK(hexKEK); err != nil {
		t.Fatal(err)
	}
	r.KEKFile = filepath.Join(r.Dir, "kek")
	if err := os.WriteFile(r.KEKFile, hexKEK, 0o600); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	r.Bin = harness.BuildIotgw(t)
	r.Setup.BuildSeconds = time.Since(t0).Seconds()
	r.Certs = harness.PKI(t)

	t0 = time.Now()
	if err := issueDevices(r.Certs, devices); err != nil {
		t.Fatal(err)
	}
	r.Setup.Devices = devices
	r.Setup.IssueSeconds = time.Since(t0).Seconds()

	t0 = time.Now()
	n, err := r.register(registries)
	if err != nil {
		t.Fatal(err)
	}
	r.Setup.Registered = n
	r.Setup.RegisterSeconds = time.Since(t0).Seconds()

	t0 = time.Now()
	r.Broker = harness.StartMosquitto(t, r.Certs)
	r.Setup.BrokerStartSeconds = time.Since(t0).Seconds()
	// The harness writes the config next to the log and starts
	// "mosquitto -c <config>".
	r.BrokerPID = findProcess(filepath.Join(filepath.Dir(r.Broker.LogFile), "mosquitto.conf"))
	return r
}

// DeviceID returns the id of the n-th simulated device (from 1).
func DeviceID(n int) string { return DevicePrefix + strconv.Itoa(n) }

// issueDevices issues certificates for DeviceID(1..n).
func issueDevices(certs string, n int) error {
	ids := make(chan int)
	errs := make(chan error, issueWorkers)
	var wg sync.WaitGroup
	for range min(issueWorkers, n) {
		wg.Go(func() {
			for i := range ids {
				if err := pki.Issue(certs, DeviceID(i), time.Now()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var err error
feed:
	for i := 1; i <= n; i++ {
		select {
		case ids <- i:
		case err = <-errs:
			break feed
		}
	}
	close(ids)
	wg.Wait()
	close(errs)
	if err == nil {
		err = <-errs
	}
	if err != nil {
		return fmt.Errorf("issue device certificates: %w", err)
	}
	return nil
}

// register creates one registry per size, with the same secret for a
// device in each, and returns the number of devices added. registry.Add
// commits each device on its own (about 30 µs each here), cheap enough not
// to need a bulk path.
func (r *Rig) register(sizes []int) (int, error) {
	sizes = slices.Sorted(slices.Values(sizes))
	if len(sizes) == 0 {
		return 0, nil
	}
	secrets := make([]string, sizes[len(sizes)-1])
	for i := range secrets {
		s, err := registry.NewSecret()
		if err != nil {
			return 0, err
		}
		secrets[i] = s
	}
	ctx := context.Background()
	added := 0
	for _, size := range sizes {
		if _, ok := r.registries[size]; ok {
			continue
		}
		path := filepath.Join(r.Dir, fmt.Sprintf("registry-%d.db", size))
		reg, err := registry.Open(ctx, path, registry.WithKEK(r.kek))
		if err != nil {
			return added, err
		}
		for i := range size {
			if err := reg.Add(ctx, DeviceID(i+1), secrets[i]); err != nil {
				reg.Close()
				return added, fmt.Errorf("register %s: %w", DeviceID(i+1), err)
			}
			added++
		}
		if err := reg.Close(); err != nil {
			return added, err
		}
		r.registries[size] = path
	}
	return added, nil
}

// Registry returns the path of the registry holding DeviceID(1..size); it
// fails the test if NewRig did not make one.
func (r *Rig) Registry(t testing.TB, size int) string {
	t.Helper()
	p, ok := r.registries[size]
	if !ok {
		t.Fatalf("no registry of %d devices (have %v)", size, slices.Sorted(maps.Keys(r.registries)))
	}
	return p
}

// brokerCPU returns Mosquitto's CPU time so far, 0 when its pid is unknown.
func (r *Rig) brokerCPU() time.Duration {
	if r.BrokerPID == 0 {
		return 0
	}
	d, err := procCPU(r.BrokerPID)
	if err != nil {
		return 0
	}
	return d
}

// brokerRSS returns Mosquitto's resident set size, 0 when unknown.
func (r *Rig) brokerRSS() int64 {
	if r.BrokerPID == 0 {
		return 0
	}
	n, err := procRSS(r.BrokerPID)
	if err != nil {
		return 0
	}
	return n
}

// removeAll removes the gateway files of a stopped gateway; the registries
// and certificates stay.
func removeAll(dir string) error {
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
