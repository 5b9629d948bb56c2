// Package validate holds the checks every uplink message passes, in order,
// and their stable reason codes. It sits after envelope parsing and before
// the durable store in the pipeline.
//
// A bad message is a verdict, not a failure: Check returns a Result whose
// Rejection says why, with a stable Reason. An infrastructure fault (the
// registry or replay store unreachable, the replay store full) is returned
// as a wrapped error and never becomes a rejection; callers retry it and do
// not ack the message.
//
// The package declares the two stores it needs, KeyStore and ReplayStore,
// and the clock is injected, so every window can be tested without sleeping.
package validate
