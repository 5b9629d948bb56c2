// Package registry is the device registry: a SQLite database of devices and
// their shared secrets, with versioned migrations, and an in-memory Cache
// that serves the validator's lookups without touching SQLite per message.
//
// It sits beside the pipeline: the CLI writes it (iotgw device ...), and the
// gateway reads it through Cache, which notices a committed change within
// its refresh interval (PRAGMA data_version) and reloads.
//
// Secrets are stored as given, so the database file is created 0600 and
// must be protected like a key file. Secrets never leave this package
// except through Cache.Device (for HMAC) and Add's caller, and are never
// logged.
package registry
