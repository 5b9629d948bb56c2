package mqttio

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// coalescingConn batches what Paho writes. Paho writes every packet (each
// PUBACK, each reply PUBLISH) with its own Write, and on a TLS connection
// each Write is one TLS record and one write(2). Under load that is two
// system calls per message on the gateway and two record decryptions and
// reads in the broker. Here Write only appends to a buffer and wakes a
// flusher goroutine, which writes everything that accumulated meanwhile in
// one call: when idle, a packet goes out at once (one goroutine hand-off
// later); when busy, many packets share one record and one system call.
//
// A Write that returned nil is not yet on the wire. That changes nothing
// for the gateway's guarantees: a PUBACK the broker never received (lost in
// a buffer, a socket or the network when the process dies) means the
// broker redelivers, exactly as before.
//
// Reads go through a bufio.Reader, because Paho reads each packet header a
// byte at a time.
type coalescingConn struct {
	net.Conn
	r            *bufio.Reader
	writeTimeout time.Duration

	mu      sync.Mutex
	cond    *sync.Cond // signalled when buf is drained or err is set
	buf     []byte     // pending bytes
	err     error      // first write error; sticky
	closing bool

	kick chan struct{} // capacity 1: "buf is not empty"
	done chan struct{} // closed when the flusher has exited
}

const (
	// coalesceMax bounds the pending bytes: a Write beyond it waits for the
	// flusher, so a stuck broker blocks Paho (as a blocking socket would)
	// instead of growing memory.
	coalesceMax = 1 << 20
	// closeFlushTimeout bounds how long Close spends writing what is still
	// buffered (a DISCONNECT, last PUBACKs).
	closeFlushTimeout = 2 * time.Second
)

func newCoalescingConn(c net.Conn, writeTimeout time.Duration) *coalescingConn {
	cc := &coalescingConn{
		Conn:         c,
		r:            bufio.NewReaderSize(c, 32<<10),
		writeTimeout: writeTimeout,
		kick:         make(chan struct{}, 1),
		done:         make(chan struct{}),
	}
	cc.cond = sync.NewCond(&cc.mu)
	go cc.flusher()
	return cc
}

func (c *coalescingConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Write queues p for the flusher. It fails with the first error the
// flusher met, and waits while more than coalesceMax bytes are pending.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && !c.closing && len(c.buf) > 0 && len(c.buf)+len(p) > coalesceMax {
		c.cond.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	if c.closing {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return len(p), nil
}

// SetWriteDeadline is a no-op: Write never blocks on the network. The
// flusher puts its own deadline (writeTimeout) on every write instead.
func (c *coalescingConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline only, for the same reason.
func (c *coalescingConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *coalescingConn) flusher() {
	defer close(c.done)
	var out []byte
	for range c.kick {
		c.mu.Lock()
		out, c.buf = c.buf, out[:0]
		closing := c.closing
		c.cond.Broadcast()
		c.mu.Unlock()
		if len(out) > 0 {
			timeout := c.writeTimeout
			if closing && (timeout <= 0 || timeout > closeFlushTimeout) {
				timeout = closeFlushTimeout
			}
			if timeout > 0 {
				_ = c.Conn.SetWriteDeadline(time.Now().Add(timeout))
			}
			if _, err := c.Conn.Write(out); err != nil {
				c.mu.Lock()
				c.err = err
				c.cond.Broadcast()
				c.mu.Unlock()
				// Fail the reader too, so Paho notices and reconnects.
				_ = c.Conn.Close()
				return
			}
		}
		if closing {
			return
		}
	}
}

// Close writes what is still buffered (bounded by closeFlushTimeout), then
// closes the connection.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closing = true
	c.cond.Broadcast()
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	select {
	case <-c.done:
	case <-time.After(closeFlushTimeout + time.Second):
	}
	return c.Conn.Close()
}

// OpenTLS returns a Paho OpenConnectionFunc (for
// ClientOptions.SetCustomOpenConnectionFn) that dials u.Host with TLS
// within the options' connect timeout and wraps the connection in a
// coalescingConn, whose flusher bounds each write by writeTimeout. The
// gateway and the load generator use it.
func OpenTLS(tlsCfg *tls.Config, writeTimeout time.Duration) mqtt.OpenConnectionFunc {
	return func(u *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
		timeout := o.ConnectTimeout
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: tlsCfg}
		c, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		return newCoalescingConn(c, writeTimeout), nil
	}
}
