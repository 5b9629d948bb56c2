package limit_test

import (
	"fmt"
	"time"

	"github.com/iotgw/iotgw/pkg/limit"
)

// ExampleDevices shows a burst of 5 then a refill of 2 per second.
func ExampleDevices() {
	d := limit.NewDevices(2, 5)
	t0 := time.Unix(1_700_000_000, 0)
	n := 0
	for range 10 {
		if d.Allow("sensor_001", t0) {
			n++
		}
	}
	fmt.Println(n, d.Allow("sensor_001", t0.Add(500*time.Millisecond)))
	// Output: 5 true
}
