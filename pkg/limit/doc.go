// Package limit holds the gateway's abuse controls, all per device and all
// in memory with a bounded number of tracked devices:
//
//   - Devices: a token bucket per device (golang.org/x/time/rate), which
//     pkg/validate consults (validate.RateLimiter) after the registry
//     lookup and before the HMAC, so a flood costs neither an HMAC nor a
//     disk write.
//   - Notices: at most one rejection notice per device and reason per
//     second (limits.notice_interval), so a flood cannot turn the gateway into an amplifier.
//   - Quarantine: N bad_signature rejections within a window trip it once;
//     the gateway then disables the device in the registry.
//
// Every type takes the time as an argument (the caller's injected clock),
// so tests never sleep. Each bounds its memory with an LRU of MaxTracked
// devices: only registered, enabled devices reach the rate limiter (unknown
// ids are rejected before it), and an evicted device merely starts again
// with a full bucket, an empty quarantine count or a free notice.
package limit
