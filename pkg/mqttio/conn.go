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
// reads in the broker. Here a Write only appends to a buffer and wakes a
// flusher goroutine, which writes everything that accumulated meanwhile in
// one call: when busy, many packets share one record and one system call.
// But a Write to a connection that has been quiet for inlineAfter goes out
// at once, from the caller's goroutine: at steady rates, where packets come
// one at a time, the hand-off to the flusher's parked thread was a context
// switch or two per packet and batched nothing (issue 18).
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
	writing bool      // a write is on the wire (a Write's own or the flusher's): bytes go out in order
	last    time.Time // when the last write started

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
	// inlineAfter is how long a connection must have been quiet for a
	// Write to go out from its caller: packets that come closer together
	// go through the flusher, which batches them.
	inlineAfter = 2 * time.Millisecond
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
	if now := time.Now(); !c.writing && len(c.buf) == 0 && now.Sub(c.last) >= inlineAfter {
		// Quiet: write it now. Writes that come meanwhile queue behind
		// it and the flusher sends them once it is done.
		c.writing, c.last = true, now
		c.mu.Unlock()
		err := c.send(p, false)
		c.mu.Lock()
		c.writing = false
		queued := len(c.buf) > 0
		c.cond.Broadcast()
		c.mu.Unlock()
		if queued {
			c.wake()
		}
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	c.wake()
	return len(p), nil
}

func (c *coalescingConn) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// send writes b within the write timeout (bounded by closeFlushTimeout
// while closing). A failure is sticky: it fails every later Write and the
// reader too, so Paho notices and reconnects.
func (c *coalescingConn) send(b []byte, closing bool) error {
	timeout := c.writeTimeout
	if closing && (timeout <= 0 || timeout > closeFlushTimeout) {
		timeout = closeFlushTimeout
	}
	if timeout > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(timeout))
	}
	if _, err := c.Conn.Write(b); err != nil {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		c.cond.Broadcast()
		c.mu.Unlock()
		_ = c.Conn.Close()
		return err
	}
	return nil
}

// SetWriteDeadline is a no-op: every write, a Write's own or the
// flusher's, gets its own deadline (writeTimeout) instead.
func (c *coalescingConn) SetWriteDeadline(time.Time) error { return nil }

// SetDeadline sets the read deadline only, for the same reason.
func (c *coalescingConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *coalescingConn) flusher() {
	defer close(c.done)
	var out []byte
	for range c.kick {
		c.mu.Lock()
		for c.writing && c.err == nil {
			c.cond.Wait() // a Write's own write is on the wire: ours follows it
		}
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		out, c.buf = c.buf, out[:0]
		closing := c.closing
		c.writing = len(out) > 0
		if c.writing {
			c.last = time.Now()
		}
		c.cond.Broadcast()
		c.mu.Unlock()
		if len(out) > 0 {
			err := c.send(out, closing)
			c.mu.Lock()
			c.writing = false
			c.cond.Broadcast()
			c.mu.Unlock()
			if err != nil {
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
