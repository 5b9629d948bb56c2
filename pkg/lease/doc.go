// Package lease forwards rows that a storage engine hands out under
// per-device leases (today the PostgreSQL engine shared by several
// gateways). It sits between the outbox (where accepted messages are
// durable) and forward.Dispatcher (which posts them): it claims devices,
// submits one row per device at a time, admits each POST only while the
// lease that fences it is known to outlast the POST, finishes (deletes or
// buries) settled rows under that lease's epoch, renews what it holds and
// gives leases back.
//
// Store is the engine's side of the contract; leasetest runs the whole
// contract against every engine and the simulation's model.
package lease
