package audit_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/iotgw/iotgw/pkg/audit"
)

// Example appends two entries to a fresh trail and verifies the chain.
func Example() {
	dir, _ := os.MkdirTemp("", "audit-example")
	defer os.RemoveAll(dir)
	ctx := context.Background()
	l, err := audit.Open(ctx, filepath.Join(dir, "registry.db"), time.Now)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer l.Close()
	err = l.Append(ctx,
		&audit.Entry{Actor: "cli:alice", Device: "sensor_001", Action: "device.add"},
		&audit.Entry{Actor: "gateway", Device: "sensor_001", Action: "reject", Reason: "rate_limited", Count: 1755})
	if err != nil {
		fmt.Println(err)
		return
	}
	n, err := l.Verify(ctx)
	fmt.Println(n, err)
	// Output: 2 <nil>
}
