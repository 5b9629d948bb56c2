package replay_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/iotgw/iotgw/pkg/replay"
	"github.com/iotgw/iotgw/pkg/validate"
)

func ExampleNew() {
	now := time.Unix(1727712000, 0) // the instant the validator judged the message fresh at
	m := replay.New(replay.Config{MaxEntries: 2})
	ctx := context.Background()
	expires := now.Add(5 * time.Minute) // the message's timestamp + max_clock_skew

	dup, _ := m.Record(ctx, "sensor_001", [16]byte{1}, expires, now)
	fmt.Println("first:", dup)
	dup, _ = m.Record(ctx, "sensor_001", [16]byte{1}, expires, now)
	fmt.Println("again:", dup)
	dup, _ = m.Record(ctx, "sensor_002", [16]byte{1}, expires, now)
	fmt.Println("other device:", dup)
	_, err := m.Record(ctx, "sensor_003", [16]byte{1}, expires, now)
	fmt.Println("full:", errors.Is(err, validate.ErrReplayFull))
	// Output:
	// first: false
	// again: true
	// other device: false
	// full: true
}
