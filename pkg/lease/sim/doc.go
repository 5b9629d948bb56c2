// Package sim is the deterministic simulation of the delivery core
// (docs/SIMULATION.md). Its test runs several gateways in one process
// under testing/synctest (fake time), each a real lease.Forwarder and a
// real forward.Dispatcher with an accept path that commits through the
// in-memory model of the shared database (memstore), against a seeded
// schedule of faults: database stalls, dropped connections and lost
// COMMIT answers, lease expiry, crashes and restarts, clocks that
// disagree, MQTT redelivery and copies, and a backend that answers 2xx,
// 4xx, 5xx, slowly or not at all. The invariants of the delivery core are
// checked at every POST, every commit and at the end; a failing seed
// prints the one-line command that replays it.
//
// The package has no code outside its tests.
package sim
