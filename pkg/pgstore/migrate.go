package pgstore

// migrations is the whole PostgreSQL schema of one iotgw deployment: the
// registry, the audit chain, the outbox with its replay ids, leases and
// dead letters. Applied in order under an advisory lock (Migrate), each
// step in its own transaction and recorded in iotgw_migrations. Never edit
// a released step: append a new one.
//
// The registry and audit tables keep the SQLite column names, so the
// registry and audit packages run their SQL on either engine (see
// Dialect); booleans are BOOLEAN here.
var migrations = []string{
	1: `
CREATE TABLE devices (
	device_id  TEXT PRIMARY KEY,
	enabled    BOOLEAN NOT NULL DEFAULT TRUE,
	created_at BIGINT NOT NULL,
	revoked_at BIGINT
);
CREATE TABLE device_keys (
	device_id  TEXT NOT NULL,
	key_id     BIGINT NOT NULL,
	secret     BYTEA NOT NULL,
	sealed     BOOLEAN NOT NULL DEFAULT FALSE,
	created_at BIGINT NOT NULL,
	expires_at BIGINT,
	PRIMARY KEY (device_id, key_id)
);
CREATE TABLE registry_meta (
	name  TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
-- registry_version counts registry changes; every change also notifies
-- channel iotgw_registry, so each gateway's cache reloads at once (the
-- version is the fallback when a notification is missed).
CREATE TABLE registry_version (
	id      INTEGER PRIMARY KEY CHECK (id = 1),
	version BIGINT NOT NULL
);
INSERT INTO registry_version(id, version) VALUES (1, 0);
CREATE FUNCTION iotgw_registry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	UPDATE registry_version SET version = version + 1 WHERE id = 1;
	PERFORM pg_notify('iotgw_registry', '');
	RETURN NULL;
END $$;
CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE ON devices
	FOR EACH STATEMENT EXECUTE FUNCTION iotgw_registry_changed();
CREATE TRIGGER device_keys_changed AFTER INSERT OR UPDATE OR DELETE ON device_keys
	FOR EACH STATEMENT EXECUTE FUNCTION iotgw_registry_changed();
CREATE TRIGGER registry_meta_changed AFTER INSERT OR UPDATE OR DELETE ON registry_meta
	FOR EACH STATEMENT EXECUTE FUNCTION iotgw_registry_changed();

CREATE TABLE audit_log (
	seq        BIGINT PRIMARY KEY,
	at_ms      BIGINT NOT NULL,
	actor      TEXT NOT NULL,
	device     TEXT NOT NULL,
	action     TEXT NOT NULL,
	reason     TEXT NOT NULL,
	message_id TEXT NOT NULL,
	count      BIGINT NOT NULL,
	prev_hash  TEXT NOT NULL,
	hash       TEXT NOT NULL
);
CREATE TABLE audit_head (
	id   INTEGER PRIMARY KEY CHECK (id = 1),
	seq  BIGINT NOT NULL,
	hash TEXT NOT NULL
);

-- One row per device that ever had a message accepted: its per-device
-- sequence (dseq, allocated under this row's lock in the accepting
-- transaction, so dseq order is commit order), how many rows it has
-- pending (the fleet-wide outbox.max_pending_per_device quota), and the
-- forwarding lease: the gateway that forwards its rows, and until when.
CREATE TABLE outbox_device (
	device_id   TEXT PRIMARY KEY,
	next_dseq   BIGINT NOT NULL DEFAULT 0,
	pending     BIGINT NOT NULL DEFAULT 0,
	lease_owner TEXT NOT NULL DEFAULT '',
	lease_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
CREATE INDEX outbox_device_claimable ON outbox_device (lease_until) WHERE pending > 0;
CREATE TABLE outbox (
	seq         BIGSERIAL PRIMARY KEY,
	device_id   TEXT NOT NULL,
	dseq        BIGINT NOT NULL,
	message_id  TEXT NOT NULL,
	timestamp   TEXT NOT NULL,
	payload     BYTEA NOT NULL,
	received_at BIGINT NOT NULL,
	UNIQUE (device_id, dseq)
);
-- The replay authority: a message id is accepted once per device, by
-- whichever gateway commits it first (INSERT ... ON CONFLICT DO NOTHING in
-- the same transaction as its outbox row).
CREATE TABLE seen (
	device_id  TEXT NOT NULL,
	message_id BYTEA NOT NULL,
	expires    BIGINT NOT NULL,
	ts         BIGINT NOT NULL,
	PRIMARY KEY (device_id, message_id)
);
CREATE INDEX seen_expires ON seen (expires);
CREATE TABLE seen_horizon (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	ts BIGINT NOT NULL
);
INSERT INTO seen_horizon(id, ts) VALUES (1, 0);
CREATE TABLE deadletter (
	seq         BIGINT PRIMARY KEY,
	device_id   TEXT NOT NULL,
	message_id  TEXT NOT NULL,
	timestamp   TEXT NOT NULL,
	payload     BYTEA NOT NULL,
	received_at BIGINT NOT NULL,
	attempts    INTEGER NOT NULL,
	last_error  TEXT NOT NULL,
	dead_at     BIGINT NOT NULL
);`,
	// 2: fencing and one freshness window for the fleet (issue 15).
	// lease_epoch is each device's fencing token, raised by every claim:
	// renew, finish, bury and release apply only under the epoch the
	// caller holds. fleet holds the freshness window every gateway must
	// agree on (validation.max_clock_skew), so that ids are pruned by one
	// rule with the database's clock.
	2: `
ALTER TABLE outbox_device ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
CREATE TABLE fleet (
	id                 INTEGER PRIMARY KEY CHECK (id = 1),
	max_clock_skew_ms  BIGINT NOT NULL
);`,
	// 3: counter mode (issue 17). devices.freshness is a device's mode
	// ('timestamp' or 'counter'); outbox_device.counter_bound is the
	// highest counter accepted from a counter-mode device, raised under
	// the device row's lock in the transaction that inserts the message,
	// so two gateways never both accept one counter. A counter-mode
	// message keeps its counter in outbox.timestamp (outbox.CounterMark)
	// and has no seen row.
	3: `
ALTER TABLE devices ADD COLUMN freshness TEXT NOT NULL DEFAULT 'timestamp';
ALTER TABLE outbox_device ADD COLUMN counter_bound BIGINT NOT NULL DEFAULT 0;`,
	// 4: the reset floor (issue 17). counter_min_key is the key that
	// `iotgw device reset-counter` issued with the reset: a counter-mode
	// message verified with an older key is refused however high its
	// counter (a gateway may still hold the old key in its registry cache
	// for a moment after the reset).
	4: `
ALTER TABLE outbox_device ADD COLUMN counter_min_key BIGINT NOT NULL DEFAULT 0;`,
}
