package sqlitestore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"github.com/iotgw/iotgw/pkg/outbox"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkWrite measures one group commit of batch accepted messages plus
// the deletes of the previous batch (the steady state of the writer), with
// the default synchronous=full. Reported per message, in wall time and in
// the process's CPU time (user + system, from getrusage: it includes the
// kernel's share of each commit's writes and fsync). The batch sizes show
// the fixed cost of a commit: on the development VM about 0.3 ms of CPU
// (see docs/PERFORMANCE.md), so a commit of one message costs as much as
// 50 messages do in a commit of 256.
func BenchmarkWrite(b *testing.B) {
	for _, batch := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchWrite(b, batch) })
	}
}

func benchWrite(b *testing.B, batch int) {
	ctx := context.Background()
	cfg := outbox.DefaultConfig()
	cfg.Path = filepath.Join(b.TempDir(), "outbox.db")
	s, err := Open(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	payload := []byte(`{"seq":123456,"sent_ns":1764331200000000000}`)
	now := time.Now()
	mk := func() []*outbox.Record {
		recs := make([]*outbox.Record, batch)
		for i := range recs {
			var id [16]byte
			rand.Read(id[:])
			recs[i] = &outbox.Record{DeviceID: "sim-" + hex.EncodeToString(id[:1]), MessageID: hex.EncodeToString(id[:]), ID: id,
				Timestamp: "1764331200", Payload: payload, ReceivedAt: now, Expires: now.Add(5 * time.Minute)}
		}
		return recs
	}
	var prev []int64
	lastSeq := int64(0)
	var cpu int64 // ns of user + system time spent in write, summed
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		recs := mk()
		b.StartTimer()
		c0 := processCPU()
		if _, err := s.write(ctx, recs, prev, lastSeq); err != nil {
			b.Fatal(err)
		}
		cpu += processCPU() - c0
		prev = prev[:0]
		for _, r := range recs {
			prev = append(prev, r.Seq)
		}
		lastSeq = recs[len(recs)-1].Seq
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch)/1000, "µs/msg")
	b.ReportMetric(float64(cpu)/float64(b.N*batch)/1000, "cpu-µs/msg")
}

// processCPU returns the process's user + system time in nanoseconds.
func processCPU() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
