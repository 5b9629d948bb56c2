package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Reseal re-seals every key under next, in one transaction: either every
// row is sealed under next and the recorded fingerprint is next's, or
// (on any error, such as a row that does not open) nothing changed.
//
// The registry must have been opened with its current KEK, or with none
// when its secrets are still in the clear: then Reseal is how a plaintext
// registry becomes sealed. Afterwards the storage is compacted (SQLite:
// the file is vacuumed and its WAL truncated; PostgreSQL: VACUUM FULL of
// the registry tables), so the old forms of the rows (plaintext, or sealed
// under the old KEK) do not linger in free pages. It returns the number of
// keys re-sealed.
//
// A gateway running on the registry that holds neither next nor, as its
// previous KEK (WithPreviousKEK), the KEK before, fails closed at its next
// refresh: its Cache applies every change but rejects each device whose
// key it can no longer open, until it is restarted with the new KEK.
func (r *Registry) Reseal(ctx context.Context, next *KEK) (int, error) {
	if next == nil {
		return 0, errors.New("kek rotate: no new KEK")
	}
	if cur, _ := r.keks(); r.sealed && cur == nil {
		return 0, fmt.Errorf("kek rotate: %w", ErrSealed)
	}
	n, err := r.reseal(ctx, next)
	if err != nil {
		return 0, fmt.Errorf("kek rotate: %w (nothing changed)", err)
	}
	r.kmu.Lock()
	r.kek, r.sealed = next, true
	r.kmu.Unlock()
	if err := r.d.Compact(ctx, r.db); err != nil {
		return n, fmt.Errorf("kek rotate: re-sealed %d keys, but %w (old rows may linger in free pages)", n, err)
	}
	return n, nil
}

type storedKey struct {
	device string
	id     int64
	blob   []byte
	sealed bool
}

// storedKeys reads every device key row in tx. The rows are closed when it
// returns, before the caller writes in the same transaction.
func storedKeys(ctx context.Context, tx *sql.Tx) ([]storedKey, error) {
	rows, err := tx.QueryContext(ctx, `SELECT device_id, key_id, secret, sealed FROM device_keys ORDER BY device_id, key_id`) // no parameters: portable as is
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var keys []storedKey
	for rows.Next() {
		var k storedKey
		if err := rows.Scan(&k.device, &k.id, &k.blob, &k.sealed); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return keys, nil
}

func (r *Registry) reseal(ctx context.Context, next *KEK) (int, error) {
	tx, err := r.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if fp, err := fingerprint(ctx, tx); err != nil {
		return 0, err
	} else if (fp != "") != r.sealed {
		return 0, errors.New("registry sealing changed since it was opened; run the command again")
	}
	keys, err := storedKeys(ctx, tx)
	if err != nil {
		return 0, err
	}
	for _, k := range keys {
		plain, err := r.openSecret(k.device, k.id, k.blob, k.sealed)
		if err != nil {
			return 0, err
		}
		blob, err := next.seal(k.device, k.id, plain)
		clear(plain)
		if err != nil {
			return 0, err
		}
		if _, err := tx.ExecContext(ctx, r.q(`UPDATE device_keys SET secret = ?, sealed = ? WHERE device_id = ? AND key_id = ?`), blob, true, k.device, k.id); err != nil {
			return 0, err
		}
	}
	if _, err := tx.ExecContext(ctx, r.q(`INSERT INTO registry_meta(name, value) VALUES('kek_fingerprint', ?)
		ON CONFLICT(name) DO UPDATE SET value = excluded.value`), next.fp); err != nil {
		return 0, err
	}
	return len(keys), tx.Commit()
}
