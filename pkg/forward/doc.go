// Package forward delivers accepted messages to the HTTP backend: one
// keep-alive client, a classification of each answer as done, final or
// retryable, exponential backoff with jitter and a cap, a circuit breaker,
// and a Dispatcher that keeps per-device order with a bounded worker pool.
//
// It sits after the durable outbox in the pipeline: every Job it is given is
// already stored, so a retry may wait as long as it needs, and the gateway
// deletes the row only once the Dispatcher reports the Job settled.
package forward
