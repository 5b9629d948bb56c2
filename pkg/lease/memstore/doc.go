// Package memstore is an in-memory model of the database that gateways
// share (the PostgreSQL engine): the outbox with per-device DSeq and
// quota, the replay ids that are the replay authority across gateways,
// the replay horizon, per-device forwarding leases with epochs, and the
// dead letters. It passes the same conformance suite (leasetest) as the
// real engines, so the deterministic simulation (package lease/sim) that
// drives gateways against it tests the real contract.
//
// Each gateway talks to it through its own Conn, whose calls a seeded
// Injector can stall (a frozen connection), fail without effect (a
// dropped connection) or let take effect and then fail (a COMMIT whose
// answer is lost). Its clock is time.Now, which is fake time under
// testing/synctest: one clock for the fleet, as the database's is.
//
// It is for tests only: nothing in the gateway imports it.
package memstore
