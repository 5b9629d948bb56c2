package harness

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The strings of mosquitto/mosquitto.conf that MosquittoConfig replaces.
const (
	confCertsDir = "/etc/iotgw/certs/"
	confACLFile  = "/etc/iotgw/mosquitto/acl"
	confDataDir  = "/var/lib/iotgw/mosquitto/"
	confPrefix   = "/etc/iotgw/"
	dataPrefix   = "/var/lib/iotgw/"
)

// confListener matches the device listener line of mosquitto/mosquitto.conf,
// confGatewayListener the gateway's.
var (
	confListener        = regexp.MustCompile(`(?m)^listener 8883[ \t]*$`)
	confGatewayListener = regexp.MustCompile(`(?m)^listener 8884 127\.0\.0\.1[ \t]*$`)
)

// startTimeout bounds how long StartMosquitto and Restart wait for the
// broker to accept TLS connections.
const startTimeout = 10 * time.Second

// MosquittoConfig returns the project's mosquitto.conf (conf) made runnable
// elsewhere: the certificate directory /etc/iotgw/certs/ becomes certsDir,
// the ACL /etc/iotgw/mosquitto/acl becomes aclFile, the persistence
// directory /var/lib/iotgw/mosquitto/ becomes dataDir, the device listener
// "listener 8883" becomes a listener on 127.0.0.1:port and the gateway
// listener "listener 8884 127.0.0.1" one on 127.0.0.1:gatewayPort. The
// crlfile (/etc/iotgw/certs/crl.pem) moves with the certificate directory.
// It fails if any of these is missing from conf, if another /etc/iotgw/ or
// /var/lib/iotgw/ path remains, or if a path holds white space (Mosquitto
// cannot read it).
func MosquittoConfig(conf []byte, certsDir, aclFile, dataDir string, port, gatewayPort int) ([]byte, error) {
	for _, p := range []string{certsDir, aclFile, dataDir} {
		if strings.ContainsAny(p, " \t\r\n") {
			return nil, fmt.Errorf("mosquitto config: path %q contains white space", p)
		}
	}
	s := string(conf)
	for _, old := range []string{confCertsDir, confACLFile, confDataDir} {
		if !strings.Contains(s, old) {
			return nil, fmt.Errorf("mosquitto config: %q not found; update test/harness to match mosquitto.conf", old)
		}
	}
	if n := len(confListener.FindAllStringIndex(s, -1)); n != 1 {
		return nil, fmt.Errorf("mosquitto config: want one \"listener 8883\" line, found %d; update test/harness to match mosquitto.conf", n)
	}
	if n := len(confGatewayListener.FindAllStringIndex(s, -1)); n != 1 {
		return nil, fmt.Errorf("mosquitto config: want one \"listener 8884 127.0.0.1\" line, found %d; update test/harness to match mosquitto.conf", n)
	}
	s = strings.ReplaceAll(s, confCertsDir, strings.TrimSuffix(certsDir, "/")+"/")
	s = strings.ReplaceAll(s, confACLFile, aclFile)
	s = strings.ReplaceAll(s, confDataDir, strings.TrimSuffix(dataDir, "/")+"/")
	s = confListener.ReplaceAllLiteralString(s, "listener "+strconv.Itoa(port)+" 127.0.0.1")
	s = confGatewayListener.ReplaceAllLiteralString(s, "listener "+strconv.Itoa(gatewayPort)+" 127.0.0.1")
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") && (strings.Contains(line, confPrefix) || strings.Contains(line, dataPrefix)) {
			return nil, fmt.Errorf("mosquitto config: unhandled path in %q; update test/harness to match mosquitto.conf", line)
		}
	}
	return []byte(s), nil
}

// Broker is a running Mosquitto process started by StartMosquitto.
// Its methods must be called from the test's goroutine.
type Broker struct {
	// Addr is the DEVICE listener's URL for Paho: "ssl://127.0.0.1:PORT".
	// It forces each client id to the certificate's CN.
	Addr string
	// Port is the device listener's port; Restart keeps it.
	Port int
	// GatewayAddr is the gateway listener's URL, "ssl://127.0.0.1:PORT":
	// client ids are kept as asked. The gateway connects here.
	GatewayAddr string
	// GatewayPort is the gateway listener's port; Restart keeps it.
	GatewayPort int
	// CertsDir is the PKI directory the broker uses.
	CertsDir string
	// LogFile holds Mosquitto's output over all its runs.
	LogFile string

	t       testing.TB
	bin     string
	conf    string
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// StartMosquitto starts a real mosquitto on a free port, configured from
// the project's mosquitto/mosquitto.conf and mosquitto/acl (see
// MosquittoConfig) with the PKI in certsDir (made by PKI), and waits until
// it accepts TLS connections. It fails the test if mosquitto is not
// installed or does not start. The broker is stopped when the test ends;
// its log is printed if the test failed.
func StartMosquitto(t testing.TB, certsDir string) *Broker {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/mosquitto")
	}
	if err != nil {
		t.Fatalf("harness: mosquitto is not installed (need Mosquitto 2.0 on PATH or at /usr/sbin/mosquitto; e.g. apt-get install mosquitto): %v", err)
	}
	root := RepoRoot(t)
	projectConf, err := os.ReadFile(filepath.Join(root, "mosquitto", "mosquitto.conf"))
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	acl, err := os.ReadFile(filepath.Join(root, "mosquitto", "acl"))
	if err != nil {
		t.Fatalf("harness: %v", err)
	}

	dir := ReadableTempDir(t)
	aclFile := filepath.Join(dir, "acl")
	if err := os.WriteFile(aclFile, acl, 0o644); err != nil {
		t.Fatalf("harness: %v", err)
	}
	// The persistence directory: Mosquitto, having dropped root, writes
	// its database here.
	dataDir := filepath.Join(dir, "data")
	if err := os.Mkdir(dataDir, 0o755); err != nil {
		t.Fatalf("harness: %v", err)
	}
	if err := os.Chmod(dataDir, 0o777); err != nil {
		t.Fatalf("harness: %v", err)
	}
	port, gatewayPort := FreePort(t), FreePort(t)
	for gatewayPort == port {
		gatewayPort = FreePort(t)
	}
	conf, err := MosquittoConfig(projectConf, certsDir, aclFile, dataDir, port, gatewayPort)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	if os.Getenv("HARNESS_MOSQUITTO_DEBUG") != "" {
		conf = append(conf, "\nlog_type all\n"...)
	}
	b := &Broker{
		Addr:        "ssl://127.0.0.1:" + strconv.Itoa(port),
		Port:        port,
		GatewayAddr: "ssl://127.0.0.1:" + strconv.Itoa(gatewayPort),
		GatewayPort: gatewayPort,
		CertsDir:    certsDir,
		LogFile:     filepath.Join(dir, "mosquitto.log"),
		t:           t,
		bin:         bin,
		conf:        filepath.Join(dir, "mosquitto.conf"),
	}
	if err := os.WriteFile(b.conf, conf, 0o644); err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := b.stop(); err != nil {
			t.Errorf("harness: %v", err)
		}
		if t.Failed() {
			log, _ := os.ReadFile(b.LogFile)
			t.Logf("mosquitto log (%s):\n%s", b.LogFile, log)
		}
	})
	if err := b.start(); err != nil {
		t.Fatalf("harness: %v", err)
	}
	return b
}

// Stop stops the broker (SIGTERM, then SIGKILL after 5 s) and waits for it
// to exit. Clients see their connections drop. Stopping a stopped broker
// does nothing.
func (b *Broker) Stop() {
	b.t.Helper()
	if err := b.stop(); err != nil {
		b.t.Fatalf("harness: %v", err)
	}
}

// Restart stops the broker if it is running and starts it again on the
// same port, waiting until it accepts TLS connections. The project's
// config has persistence on, so sessions and queued messages survive a
// Restart (Mosquitto saves them on SIGTERM).
func (b *Broker) Restart() {
	b.t.Helper()
	if err := b.stop(); err != nil {
		b.t.Fatalf("harness: %v", err)
	}
	if err := b.start(); err != nil {
		b.t.Fatalf("harness: %v", err)
	}
}

func (b *Broker) start() error {
	log, err := os.OpenFile(b.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start mosquitto: %w", err)
	}
	fmt.Fprintf(log, "=== harness: %s -c %s (device port %d, gateway port %d) at %s\n", b.bin, b.conf, b.Port, b.GatewayPort, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, so a Ctrl-C to the test's group does not
	// race the cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	log.Close()
	if err != nil {
		return fmt.Errorf("start mosquitto: %w", err)
	}
	exited := make(chan struct{})
	b.mu.Lock()
	b.cmd, b.exited, b.waitErr = cmd, exited, nil
	b.mu.Unlock()
	go func() {
		err := cmd.Wait()
		b.mu.Lock()
		b.waitErr = err
		b.mu.Unlock()
		close(exited)
	}()

	cfg, err := tlsConfig(b.CertsDir, "gateway")
	if err != nil {
		return fmt.Errorf("start mosquitto: %w", err)
	}
	deadline := time.Now().Add(startTimeout)
	for _, port := range []int{b.Port, b.GatewayPort} {
		if err := b.waitTLS(exited, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cfg, deadline); err != nil {
			return err
		}
	}
	return nil
}

// waitTLS waits until addr completes a TLS handshake, the broker exits or
// deadline passes.
func (b *Broker) waitTLS(exited <-chan struct{}, addr string, cfg *tls.Config, deadline time.Time) error {
	for {
		err := probeTLS(addr, cfg)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			b.mu.Lock()
			b.cmd = nil
			werr := b.waitErr
			b.mu.Unlock()
			return fmt.Errorf("start mosquitto: it exited (%w); log:\n%s", werr, tail(b.LogFile))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start mosquitto: no TLS on %s after %v: %w; log:\n%s", addr, startTimeout, err, tail(b.LogFile))
		}
	}
}

func (b *Broker) exitErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waitErr
}

func (b *Broker) stop() error {
	b.mu.Lock()
	cmd, exited := b.cmd, b.exited
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return fmt.Errorf("stop mosquitto: it had already exited (%w)", b.exitErr())
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return nil
	case <-time.After(5 * time.Second):
	}
	_ = cmd.Process.Kill()
	<-exited
	return errors.New("stop mosquitto: it ignored SIGTERM for 5 s and was killed")
}

// probeTLS completes a TLS handshake with the broker as the gateway.
func probeTLS(addr string, cfg *tls.Config) error {
	d := &net.Dialer{Timeout: time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	return conn.Close()
}

// tail returns the last 4 KiB of a log file.
func tail(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return []byte(err.Error())
	}
	if len(b) > 4096 {
		b = b[len(b)-4096:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return b
}
