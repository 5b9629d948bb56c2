// Package pgtest gives each test a fresh PostgreSQL database of its own,
// on the server the tests use (127.0.0.1:5432, user root, trust auth; or
// $IOTGW_TEST_PG, a DSN for a database from which new ones may be
// created), dropped when the test ends. Tests that need PostgreSQL fail
// when it is not there, so a missing server is never mistaken for a pass.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Admin is the default DSN of the database new test databases are created from.
const Admin = "postgres://root@127.0.0.1:5432/test?sslmode=disable"

func admin() string {
	if s := os.Getenv("IOTGW_TEST_PG"); s != "" {
		return s
	}
	return Admin
}

// New creates an empty database iotgw_t_<random> and returns its DSN. It
// is dropped (its connections ended) in t.Cleanup.
func New(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	base := admin()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("pgtest: PostgreSQL not reachable (set IOTGW_TEST_PG to a DSN): %v", err)
	}
	defer conn.Close(ctx) //nolint:errcheck // test helper
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "iotgw_t_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
			return
		}
		defer c.Close(ctx) //nolint:errcheck // test helper
		if _, err := c.Exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		t.Fatalf("pgtest: %s is not a postgres:// URL", "IOTGW_TEST_PG")
	}
	u.Path = "/" + name
	return u.String()
}
