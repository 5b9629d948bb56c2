package registry_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/iotgw/iotgw/pkg/registry"
)

func ExampleOpen() {
	dir, err := os.MkdirTemp("", "registry-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	r, err := registry.Open(ctx, filepath.Join(dir, "iotgw.db"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	if err := r.Add(ctx, "sensor_001", "a-shared-secret-of-16+-chars"); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(r.Add(ctx, "sensor_001", "another-secret-0123456789"))

	// The gateway reads devices through a Cache, never per message from SQLite.
	c, err := registry.NewCache(ctx, r)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	d, err := c.Device(ctx, "sensor_001")
	fmt.Println(d.Enabled, err)
	// Output:
	// sensor_001: device already exists
	// true <nil>
}
