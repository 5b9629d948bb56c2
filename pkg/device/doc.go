// Package device is the Go device SDK: what a device (or a simulator of
// many) needs to talk to iotgw. It sits outside the gateway's pipeline, on
// the other end of the broker:
//
//	device (this package) → Mosquitto :8883 → iotgw serve → backend
//	device (this package) ← Mosquitto :8883 ← iotgw serve (signed reply)
//
// Dial connects over mutual TLS with Paho (MQTT 3.1.1), subscribes to the
// device's response topic device/<id>/response at QoS 1 and only then
// returns, so no reply is missed. Publish signs a payload with the device's
// shared secret (pkg/envelope) and sends it at QoS 1 on device/<id>/data.
// Request also waits for the downlink whose in_reply_to names the message,
// verifies its signature with the downlink key K_down
// (envelope.DownlinkKey) and returns it; a rejection notice comes back as a
// *RejectedError carrying the stable reason code, a downlink that does not
// verify as ErrBadReplySignature. A device without a clock calls SyncTime
// first: it asks the gateway for the time on device/<id>/time, bound to a
// fresh nonce, and signs its messages with that time from then on (Now).
//
// The wire format, the keys and the reason codes are in docs/PROTOCOL.md
// ("Connecting a device"). The package imports only pkg/envelope from this
// module; iotgw sim (demo and load) is built on it.
package device
