package validate

// Reason is a stable rejection code. Logs, metrics and rejection notices
// use these exact strings; never rename one.
type Reason string

// The reason codes, in the order the checks run.
const (
	// Malformed: not a well-formed envelope (see docs/PROTOCOL.md).
	Malformed Reason = "malformed"
	// IdentityMismatch: the topic's device id differs from device_id.
	IdentityMismatch Reason = "identity_mismatch"
	// UnknownDevice: the device is not in the registry.
	UnknownDevice Reason = "unknown_device"
	// Disabled: the device is registered but disabled.
	Disabled Reason = "disabled"
	// KeyUnavailable: the device is registered and enabled, but the
	// gateway cannot open one of its keys (a row sealed under a KEK this
	// gateway does not hold, or altered, or stored in the clear in a
	// sealed registry). It is never judged under a key remembered from
	// before: the registry fails closed for that device only.
	KeyUnavailable Reason = "key_unavailable"
	// Stale: the timestamp is further than the allowed skew from now, past or future.
	Stale Reason = "stale"
	// BadSignature: the HMAC does not match.
	BadSignature Reason = "bad_signature"
	// Replay: the message id was already accepted inside the window.
	Replay Reason = "replay"
	// RateLimited: the device sent more than its limits.device_rate /
	// limits.device_burst allow; checked after the registry lookup, before
	// the freshness and HMAC checks.
	RateLimited Reason = "rate_limited"
	// QuotaExceeded: a capacity limit refused the message: the device's own
	// quota of pending outbox rows or of remembered replay ids, or the
	// fleet-wide replay store being full. The device may resend later.
	QuotaExceeded Reason = "quota_exceeded"
)

// Reasons lists every reason code, in check order.
var Reasons = []Reason{Malformed, IdentityMismatch, UnknownDevice, Disabled, KeyUnavailable, Stale, BadSignature, Replay, RateLimited, QuotaExceeded}

// Rejection is the verdict on a message that failed a check. It is not an
// error: a rejected message is acked and counted, never retried.
type Rejection struct {
	// Reason is the stable code.
	Reason Reason
	// Detail is a one-line, log-safe explanation (never payload or secret).
	Detail string
}

// String returns "reason: detail".
func (r *Rejection) String() string {
	if r.Detail == "" {
		return string(r.Reason)
	}
	return string(r.Reason) + ": " + r.Detail
}
