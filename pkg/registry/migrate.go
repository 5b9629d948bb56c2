package registry

import "github.com/iotgw/iotgw/pkg/internal/sqlitex"

// migrations is the registry's schema history. Never edit a released step:
// append a new one.
var migrations = []sqlitex.Migration{
	{Version: 1, SQL: `CREATE TABLE devices (
		device_id  TEXT PRIMARY KEY NOT NULL,
		secret     TEXT NOT NULL,
		enabled    INTEGER NOT NULL DEFAULT 1,
		created_at INTEGER NOT NULL
	) WITHOUT ROWID`},
	// 2: more than one key per device (rotation with overlap), secrets
	// sealed at rest (sealed = 1: version || nonce || AES-256-GCM, see
	// seal.go), revocation, and registry_meta (kek_fingerprint).
	{Version: 2, SQL: `CREATE TABLE device_keys (
		device_id  TEXT NOT NULL,
		key_id     INTEGER NOT NULL,
		secret     BLOB NOT NULL,
		sealed     INTEGER NOT NULL DEFAULT 0,
		created_at INTEGER NOT NULL,
		expires_at INTEGER,
		PRIMARY KEY (device_id, key_id)
	) WITHOUT ROWID;
	INSERT INTO device_keys(device_id, key_id, secret, sealed, created_at)
		SELECT device_id, 1, CAST(secret AS BLOB), 0, created_at FROM devices;
	ALTER TABLE devices DROP COLUMN secret;
	ALTER TABLE devices ADD COLUMN revoked_at INTEGER;
	CREATE TABLE registry_meta (
		name  TEXT PRIMARY KEY NOT NULL,
		value TEXT NOT NULL
	) WITHOUT ROWID`},
	// 3: counter mode (issue 17): a device's freshness mode, 'timestamp'
	// or 'counter' (docs/PROTOCOL.md, section 2a).
	{Version: 3, SQL: `ALTER TABLE devices ADD COLUMN freshness TEXT NOT NULL DEFAULT 'timestamp'`},
}
