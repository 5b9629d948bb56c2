package outbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkWrite measures one group commit of 256 accepted messages plus
// the deletes of the previous batch (the steady state of the writer), with
// the default synchronous=full. Reported per message.
func BenchmarkWrite(b *testing.B) {
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.Path = filepath.Join(b.TempDir(), "outbox.db")
	s, err := Open(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const batch = 256
	payload := []byte(`{"seq":123456,"sent_ns":1764331200000000000}`)
	now := time.Now()
	mk := func() []*Record {
		recs := make([]*Record, batch)
		for i := range recs {
			var id [16]byte
			rand.Read(id[:])
			recs[i] = &Record{DeviceID: "sim-" + hex.EncodeToString(id[:1]), MessageID: hex.EncodeToString(id[:]), ID: id,
				Timestamp: "1764331200", Payload: payload, ReceivedAt: now, Expires: now.Add(5 * time.Minute)}
		}
		return recs
	}
	var prev []int64
	lastSeq := int64(0)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		recs := mk()
		b.StartTimer()
		if _, err := s.write(ctx, recs, prev, lastSeq); err != nil {
			b.Fatal(err)
		}
		prev = prev[:0]
		for _, r := range recs {
			prev = append(prev, r.Seq)
		}
		lastSeq = recs[len(recs)-1].Seq
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch)/1000, "µs/msg")
}
