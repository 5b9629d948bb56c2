// Package envelope is the wire format of iotgw: the five-field JSON object a
// device publishes, the exact bytes that are signed, and HMAC-SHA256
// signing and verification over those bytes.
//
// It sits at the very start of the pipeline (receive → parse → validate →
// store → forward → reply) and is pure: no I/O, no clock, no logger. The
// parser is strict on purpose; see docs/PROTOCOL.md for the contract.
//
// The parser never re-serializes the payload: Envelope.Payload is a
// sub-slice of the input, exactly the bytes that were signed, and exactly the
// bytes the gateway forwards.
package envelope
