package registry_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

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

func ExampleRegistry_Rotate() {
	dir, err := os.MkdirTemp("", "registry-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()

	// A KEK seals every secret; the file would come from security.kek_file.
	kek, err := registry.ParseKEK([]byte("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n"))
	if err != nil {
		fmt.Println(err)
		return
	}
	r, err := registry.Open(ctx, filepath.Join(dir, "iotgw.db"), registry.WithKEK(kek))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	if err := r.Add(ctx, "sensor_001", "the-first-secret-0123456789"); err != nil {
		fmt.Println(err)
		return
	}
	// The old key keeps verifying for the overlap, then expires.
	k, err := r.Rotate(ctx, "sensor_001", "the-second-secret-0123456789", time.Hour)
	fmt.Println(k.ID, err)
	keys, _ := r.Keys(ctx, "sensor_001")
	for _, k := range keys {
		fmt.Println(k.ID, k.ExpiresAt.IsZero())
	}
	fmt.Println(r.Sealed())
	// Output:
	// 2 <nil>
	// 1 false
	// 2 true
	// true
}

func ExampleRegistry_AddMany() {
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
	fleet := []registry.NewDevice{
		{ID: "sensor_001", Secret: "another-secret-0123456789"},
		{ID: "sensor_002", Secret: "a-third-secret-0123456789"},
	}
	// All or nothing: sensor_001 exists, so nothing is added...
	_, _, err = r.AddMany(ctx, fleet, registry.BulkOptions{})
	fmt.Println(err)
	// ...unless existing devices are left as they are.
	added, skipped, err := r.AddMany(ctx, fleet, registry.BulkOptions{SkipExisting: true})
	fmt.Println(len(added), skipped, err)
	// Output:
	// 1 device already exists: sensor_001
	// 1 [sensor_001] <nil>
}
