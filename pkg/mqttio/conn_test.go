package mqttio

import (
	"bytes"
	"errors"
	"io"
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
