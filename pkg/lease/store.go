package lease

import (
	"context"
	"time"

	"github.com/iotgw/iotgw/pkg/outbox"
)

// Lease is one device's forwarding lease as the store granted it. Epoch is
// its fencing token: the store raises a device's epoch on every claim, so
// a gateway that lost the lease (it expired and another claimed the
// device) holds a smaller epoch and every effect it attempts is refused.
type Lease struct {
	Device string
	Epoch  int64
}

// Claim is a granted lease and the device's oldest pending rows, in DSeq
// order.
type Claim struct {
	Lease
	Rows []*outbox.Record
}

// Done is a settled row: deleted by Finish, or, with Dead set, moved to the
// dead letters. It carries the lease it was posted under.
type Done struct {
	Lease
	Seq  int64
	Dead *Dead
}

// Dead is why a row is buried.
type Dead struct {
	Attempts  int
	LastError string
	At        time.Time
}

// Store is what the Forwarder needs from a storage engine whose rows are
// claimed under leases. Every method is one transaction, and every lease
// clock is the store's own (one clock for the whole fleet), never the
// caller's.
//
// The contract, which the conformance suite (leasetest) checks on every
// engine and on the simulation's model:
//   - Claim takes the lease of up to devices devices that have pending rows
//     and no live lease, each for lease and with a new epoch greater than
//     any the device had, and returns up to rows of each one's oldest rows
//     (payloads may be left nil past a byte budget: Payload reads them).
//     Two concurrent claims never take the same device.
//   - Renew extends those of leases that owner still holds at their epoch
//     and returns them; a lease missing from the answer was taken over.
//   - Finish applies done (delete, or bury when Dead is set) and gives
//     back the leases in drained, each only while owner still holds the
//     device at that epoch: a gateway that lost a lease changes nothing.
//     It returns how many items it refused as stale.
//   - Release gives back every lease owner holds.
type Store interface {
	Claim(ctx context.Context, owner string, devices, rows int, lease time.Duration) ([]Claim, error)
	Renew(ctx context.Context, owner string, leases []Lease, lease time.Duration) ([]Lease, error)
	Finish(ctx context.Context, owner string, done []Done, drained []Lease) (stale int, err error)
	Release(ctx context.Context, owner string) error
}
