package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listen holds one connection that LISTENs on channel and calls fn for
// each notification (and once after every reconnect, since notifications
// sent meanwhile were missed), until ctx ends. Errors go to onErr and the
// connection is retried with backoff up to 5 s. Notifications are only
// wake-ups: callers also poll, so a missed one delays, never loses.
func (db *DB) Listen(ctx context.Context, channel string, fn func(), onErr func(error)) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := db.listenOnce(ctx, channel, fn, func() { delay = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		if onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

func (db *DB) listenOnce(ctx context.Context, channel string, fn func(), connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, db.cfg.ConnConfig)
	if err != nil {
		return fmt.Errorf("listen %s: %w", channel, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen %s: %w", channel, err)
	}
	connected()
	fn()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return fmt.Errorf("listen %s: %w", channel, err)
		}
		fn()
	}
}
