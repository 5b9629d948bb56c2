// Package registry is the device registry: a SQLite database of devices and
// their shared secrets, with versioned migrations, and an in-memory Cache
// that serves the validator's lookups without touching SQLite per message.
//
// It sits beside the pipeline: the CLI writes it (iotgw device ...), and the
// gateway reads it through Cache, which notices a committed change within
// its refresh interval (PRAGMA data_version) and reloads.
//
// A device has one or more keys (device_keys: key id, created, expires):
// Rotate adds one and gives the older ones an expiry (the overlap); the
// Cache's refresh deletes expired keys, and the validator ignores them
// even before that. Revoke disables a device for good.
//
// With a KEK (security.kek_file) every secret is sealed with AES-256-GCM
// under a key derived from the KEK ("iotgw/v1/kek/seal"), with associated
// data binding it to its device id and key id, so a row copied onto another
// fails to open with an error naming the device. registry_meta records the
// KEK's fingerprint (HMAC of "iotgw/v1/kek/fingerprint" under the KEK), so
// the wrong KEK fails at Open with one line. Reseal (iotgw kek rotate)
// re-seals every row in one transaction, and seals a plaintext registry.
// Without a KEK secrets are stored as given, so the database file is
// created 0600 and must be protected like a key file. Secrets never leave
// this package except through Cache.Device (for HMAC) and the callers of
// Add and Rotate, and are never logged; errors name devices and key ids,
// never secrets or the KEK.
package registry
