// Package gateway is the one place that wires the stages together:
//
//	mqttio (receive) → validate → outbox (durable) → ack → forward → reply
//
// A message is acked to the broker only when its outcome is durable: a
// rejection once it is logged and counted, an acceptance once its outbox row
// and its replay id are committed. Infrastructure faults are retried while
// the message stays unacked, so nothing is dropped and nothing is rejected
// for the gateway's own failure.
//
// Beside the pipeline, the workers answer devices' time requests
// (device/<id>/time, timereq.go): a signed time, no validation, no outbox,
// no rejection.
package gateway
