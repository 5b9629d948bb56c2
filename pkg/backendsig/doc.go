// Package backendsig is the backend request signature (docs/PROTOCOL.md
// 4b): the bytes a signature covers under each scheme (v2, the default,
// and v1), the HMAC-SHA256 over them, and the check a backend makes of a
// request it receives.
//
// It sits at the end of the pipeline, between the gateway's forwarder
// (pkg/forward signs every POST with it) and the backend, and it is meant
// to be imported by backend authors: it depends on nothing but the
// standard library, and testdata/backend-signature.json holds the golden
// vectors that every implementation, in any language, must reproduce.
// The signing key is a secret of its own (one key per purpose): never
// the bearer token, never a device secret.
package backendsig
