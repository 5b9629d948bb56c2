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

// ExampleDevice_SyncTime is a device without a clock: it asks the gateway
// for the time before its first message, and signs every message with
// the gateway's time from then on. (Compiled, not run: it needs a broker.)
func ExampleDevice_SyncTime() {
	ctx := context.Background()
	secret, _ := os.ReadFile("sensor_001.secret")
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
	// The gateway answers a device at most once a second: retry after one.
	for attempt := range 3 {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		gw, err := d.SyncTime(actx)
		cancel()
		if err == nil {
			fmt.Println("clock set to the gateway's time:", gw.UTC())
			break
		}
		fmt.Println("no answer yet:", err, "attempt", attempt+1)
		time.Sleep(time.Second)
	}
	if _, err := d.Publish(ctx, []byte(`{"temperature":21.5}`)); err != nil { // timestamped d.Now()
		fmt.Println(err)
	}
}
