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
}
