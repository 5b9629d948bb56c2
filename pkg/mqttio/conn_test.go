package mqttio

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// TestCoalescingConnOrderAndClose: every byte written arrives, in order,
// including what is still buffered when Close is called.
func TestCoalescingConnOrderAndClose(t *testing.T) {
	a, b := net.Pipe()
	c := newCoalescingConn(a, time.Second)
	var got bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(&got, b) //nolint:errcheck
	}()
	var want bytes.Buffer
	for i := range 1000 {
		p := bytes.Repeat([]byte{byte(i)}, 1+i%70)
		want.Write(p)
		if n, err := c.Write(p); err != nil || n != len(p) {
			t.Fatalf("write %d: n=%d err=%v", i, n, err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	wg.Wait()
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("received %d bytes, want %d (or out of order)", got.Len(), want.Len())
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("write after close succeeded")
	}
}

// TestCoalescingConnWriteError: a failed flush makes later writes fail
// and unblocks the reader, so Paho sees the connection as lost.
func TestCoalescingConnWriteError(t *testing.T) {
	a, b := net.Pipe()
	c := newCoalescingConn(a, time.Second)
	b.Close() // the peer is gone: the flusher's write fails
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for err == nil && time.Now().Before(deadline) {
		_, err = c.Write([]byte("packet"))
		time.Sleep(time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes kept succeeding after the peer closed")
	}
	if _, rerr := c.Read(make([]byte, 1)); rerr == nil {
		t.Fatal("read succeeded after the connection failed")
	}
	if cerr := c.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) && !errors.Is(cerr, io.ErrClosedPipe) {
		t.Fatalf("close: %v", cerr)
	}
}

// TestCoalescingConnBounded: with nobody reading, Write blocks once
// coalesceMax bytes are pending instead of growing without bound.
func TestCoalescingConnBounded(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newCoalescingConn(a, 0)
	blocked := make(chan struct{})
	go func() {
		p := make([]byte, 64<<10)
		for range 4 * coalesceMax / len(p) {
			if _, err := c.Write(p); err != nil {
				break
			}
		}
		close(blocked)
	}()
	select {
	case <-blocked:
		t.Fatal("4 MiB written to a peer that reads nothing")
	case <-time.After(300 * time.Millisecond):
	}
	c.mu.Lock()
	pending := len(c.buf)
	c.mu.Unlock()
	if pending > coalesceMax {
		t.Fatalf("%d bytes pending, bound %d", pending, coalesceMax)
	}
	b.Close()
	<-blocked
}

// TestCoalescingConnConcurrentWriters: writers at once, some written
// inline (the connection idle), some queued behind a write on the wire
// and sent by the flusher: every frame arrives whole, once, and each
// writer's frames in the order it wrote them.
func TestCoalescingConnConcurrentWriters(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		s, err := ln.Accept()
		if err == nil {
			accepted <- s
		}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	// Each write pauses before it reaches the socket (as TLS does to seal
	// a record), so that a write queued meanwhile would overtake it if
	// the flusher did not wait for the write on the wire.
	c := newCoalescingConn(slowConn{a}, 5*time.Second)
	const writers, frames = 8, 2000
	var got bytes.Buffer
	read := make(chan struct{})
	go func() {
		defer close(read)
		io.Copy(&got, b) //nolint:errcheck
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range frames {
				// A frame: writer, 2-byte sequence, then as many filler
				// bytes as the sequence's low 6 bits say, ending in 0xFF.
				f := []byte{byte(w), byte(i >> 8), byte(i)}
				f = append(f, bytes.Repeat([]byte{0xEE}, i%64)...)
				f = append(f, 0xFF)
				if _, err := c.Write(f); err != nil {
					t.Errorf("writer %d frame %d: %v", w, i, err)
					return
				}
				if i%97 == 0 {
					time.Sleep(time.Millisecond) // let the connection go idle now and then
				}
			}
		}()
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	<-read
	next := make([]int, writers)
	p := got.Bytes()
	for len(p) > 0 {
		if len(p) < 4 || int(p[0]) >= writers {
			t.Fatalf("torn frame at %d bytes from the end", len(p))
		}
		w, i := int(p[0]), int(p[1])<<8|int(p[2])
		n := 3 + i%64
		if len(p) <= n || p[n] != 0xFF || i != next[w] {
			t.Fatalf("writer %d: frame %d where %d was due (or torn)", w, i, next[w])
		}
		next[w]++
		p = p[n+1:]
	}
	for w, n := range next {
		if n != frames {
			t.Fatalf("writer %d: %d frames arrived, want %d", w, n, frames)
		}
	}
}

// slowConn pauses before every write, for 0 to 200 µs.
type slowConn struct{ net.Conn }

func (s slowConn) Write(p []byte) (int, error) {
	time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
	return s.Conn.Write(p)
}

// gateConn records each write and holds it until the test lets it go.
type gateConn struct {
	net.Conn
	calls chan []byte   // each write's bytes, as it starts
	gate  chan struct{} // one receive per write
}

func (g gateConn) Write(p []byte) (int, error) {
	g.calls <- append([]byte(nil), p...)
	<-g.gate
	return len(p), nil
}

// TestCoalescingConnQueuesBehindWire: a Write while another write is on
// the wire is queued, and the flusher sends it only after that write is
// done, so bytes never overtake each other; a Write to a connection quiet
// for inlineAfter goes out at once, from the caller.
func TestCoalescingConnQueuesBehindWire(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	g := gateConn{Conn: a, calls: make(chan []byte, 4), gate: make(chan struct{})}
	c := newCoalescingConn(g, 0)
	first := make(chan error, 1)
	go func() { _, err := c.Write([]byte("A")); first <- err }()
	if got := <-g.calls; string(got) != "A" {
		t.Fatalf("first write on the wire: %q", got)
	}
	if _, err := c.Write([]byte("B")); err != nil { // queued: returns while A is on the wire
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("C")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-g.calls:
		t.Fatalf("%q went on the wire while A was still being written", got)
	case <-time.After(50 * time.Millisecond):
	}
	g.gate <- struct{}{} // A done
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if got := <-g.calls; string(got) != "BC" {
		t.Fatalf("after A: %q, want BC in one write", got)
	}
	g.gate <- struct{}{}
	for { // until the flusher has finished with BC
		c.mu.Lock()
		idle := !c.writing && len(c.buf) == 0
		c.mu.Unlock()
		if idle {
			break
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(2 * inlineAfter) // and quiet for longer than inlineAfter
	// Quiet again: the next Write is written by its caller (it blocks in
	// the gate until released).
	done := make(chan struct{})
	go func() { c.Write([]byte("D")); close(done) }() //nolint:errcheck
	if got := <-g.calls; string(got) != "D" {
		t.Fatalf("idle write: %q", got)
	}
	select {
	case <-done:
		t.Fatal("an idle Write returned before its bytes were written: it was queued, not written inline")
	default:
	}
	g.gate <- struct{}{}
	<-done
}
