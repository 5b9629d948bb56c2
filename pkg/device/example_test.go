package device_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/iotgw/iotgw/pkg/device"
)

// ExampleDial is the smallest device: connect, send one reading, read the
// gateway's verified answer. (Compiled, not run: it needs a broker.)
func ExampleDial() {
	ctx := context.Background()
	secret, _ := os.ReadFile("sensor_001.secret") // 0600 file holding what "iotgw device add" printed
	d, err := device.Dial(ctx, device.Config{
		Broker:   "ssl://broker.example.com:8883",
		CAFile:   "certs/ca.crt",
		CertFile: "certs/devices/sensor_001.crt",
		KeyFile:  "certs/devices/sensor_001.key",
		DeviceID: "sensor_001",
		Secret:   bytes.TrimSpace(secret),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := d.Request(ctx, []byte(`{"temperature":21.5}`))
	var rej *device.RejectedError
	switch {
	case errors.As(err, &rej):
		fmt.Println("rejected:", rej.Reason)
	case errors.Is(err, device.ErrAnswerNotVerified):
		fmt.Println("the answer does not verify: check this device's secret (wrong, or not registered yet)")
	case errors.Is(err, device.ErrBadReplySignature):
		fmt.Println("forged reply: ignored")
	case err != nil:
		fmt.Println(err) // timeout: retry later with a new message
	default:
		fmt.Println("backend answered", r.Status, string(r.Body))
	}
}
