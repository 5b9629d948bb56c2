package validate_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/iotgw/iotgw/pkg/envelope"
	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

// BenchmarkCheck measures the whole validator path for an accepted message:
// parse, the checks, the HMAC and the replay record. Every operation has a
// distinct message id; the pool of pre-signed messages is replayed against
// a fresh validator and store each time round, outside the timer.
func BenchmarkCheck(b *testing.B) {
	const devices, pool = 100, 1 << 16
	keys := fakeKeys{}
	for d := range devices {
		keys[fmt.Sprintf("sensor_%03d", d)] = validate.Device{Secret: []byte(fmt.Sprintf("secret-of-device-%03d", d)), Enabled: true}
	}
	type msg struct {
		topic string
		raw   []byte
	}
	msgs := make([]msg, pool)
	for i := range msgs {
		id := fmt.Sprintf("sensor_%03d", i%devices)
		e := envelope.New(keys[id].Secret, id, t0.Unix(), uuidN(uint64(i)), []byte(`{"temperature":22.5,"humidity":61}`))
		msgs[i] = msg{id, envelope.AppendJSON(nil, &e)}
	}
	clock := func() time.Time { return t0 }
	fresh := func() *validate.Validator {
		v, err := validate.New(validate.DefaultConfig(), keys, replay.NewMemory(0, clock), clock)
		if err != nil {
			b.Fatal(err)
		}
		return v
	}
	ctx := context.Background()
	v := fresh()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == pool {
			b.StopTimer()
			v, i = fresh(), 0
			b.StartTimer()
		}
		m := msgs[i]
		res, err := v.Check(ctx, m.topic, m.raw)
		if err != nil || !res.Accepted() {
			b.Fatalf("Check: %v %v", res.Rejection, err)
		}
		i++
	}
}
