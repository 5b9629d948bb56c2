package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Channels notified by the schema's triggers.
const (
	// RegistryChannel is notified on every change to the registry tables.
	RegistryChannel = "iotgw_registry"
)

// ListenApplication is the application_name of Listen's connection, as
// pg_stat_activity shows it.
const ListenApplication = "iotgw-listen"

// Listen holds one connection of its own (not from the pool) listening on
// channels, and calls fn with the channel of each notification, from its
// own goroutine, one call at a time; fn must not block for long. After
// every (re)connect it calls fn once for each channel, since
// notifications sent while it was not listening are lost. A lost
// connection is retried with backoff (100ms doubling to 5s); each failure
// goes to onErr (may be nil). It returns when ctx is cancelled.
func Listen(ctx context.Context, db *DB, channels []string, fn func(channel string), onErr func(error)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := listenOnce(ctx, db, channels, fn, func() { backoff = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		if onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func listenOnce(ctx context.Context, db *DB, channels []string, fn func(string), connected func()) error {
	cc := db.cfg.ConnConfig.Copy()
	cc.RuntimeParams["application_name"] = ListenApplication
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("storage: postgres: listen: %w", err)
	}
	defer conn.Close(context.Background()) //nolint:errcheck // the connection is being dropped
	for _, ch := range channels {
		if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{ch}.Sanitize()); err != nil {
			return fmt.Errorf("storage: postgres: listen %s: %w", ch, err)
		}
	}
	connected()
	for _, ch := range channels {
		fn(ch)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("storage: postgres: listen: %w", err)
		}
		fn(n.Channel)
	}
}
