package perf

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultPostgres is the PostgreSQL the scale-out runs use (trust auth):
// the machine's, as in the end-to-end tests. $BENCH_PG overrides it. The
// benchmark connects to this database only to create, watch and drop its
// own databases.
const DefaultPostgres = "postgres://127.0.0.1:5432/test?sslmode=disable"

// pgStatsIdle is PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s): a backend that
// goes idle within a second of its last report holds its counts back up
// to this long. A reading of pg_stat_database is complete once every
// backend has been idle for longer, or has exited.
const pgStatsIdle = 10 * time.Second

// Postgres is the PostgreSQL server of the scale-out runs: the admin
// connection and the postmaster, whose process tree is the server's CPU.
type Postgres struct {
	// Version is server_version.
	Version string
	// Postmaster is the server's main process id.
	Postmaster int

	admin string
	conn  *pgx.Conn
}

// OpenPostgres connects to admin (a DSN) and finds the postmaster: the
// parent of this connection's backend, which must be on this machine.
func OpenPostgres(ctx context.Context, admin string) (*Postgres, error) {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL (BENCH_PG, default 127.0.0.1:5432): %w", err)
	}
	p := &Postgres{admin: admin, conn: conn}
	var backend int
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid(), current_setting('server_version')`).Scan(&backend, &p.Version); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("PostgreSQL: %w", err)
	}
	if p.Postmaster, err = parentPID(backend); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("PostgreSQL's postmaster (the server must run on this machine): %w", err)
	}
	return p, nil
}

// Close closes the admin connection.
func (p *Postgres) Close() { p.conn.Close(context.Background()) }

// CPU returns the CPU time the server's processes have used (the
// postmaster, its running children and the ones that exited): every
// database's work, not only the benchmark's. 0 if /proc cannot tell.
func (p *Postgres) CPU() time.Duration {
	d, err := procTreeCPU(p.Postmaster)
	if err != nil {
		return 0
	}
	return d
}

// CreateDatabase creates a new database and returns its name and DSN.
func (p *Postgres) CreateDatabase(ctx context.Context) (name, dsn string, err error) {
	b := make([]byte, 6)
	rand.Read(b) //nolint:errcheck // never fails
	name = "iotgw_bench_" + hex.EncodeToString(b)
	if _, err := p.conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", "", fmt.Errorf("create database %s: %w", name, err)
	}
	cfg, err := pgx.ParseConfig(p.admin)
	if err != nil {
		return "", "", err
	}
	return name, fmt.Sprintf("postgres://%s:%d/%s?sslmode=disable", cfg.Host, cfg.Port, name), nil
}

// DropDatabase drops database name, disconnecting whoever is left.
func (p *Postgres) DropDatabase(ctx context.Context, name string) error {
	if _, err := p.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// DBStats is a reading of pg_stat_database.
type DBStats struct {
	// Commits and Rollbacks are the database's xact_commit, xact_rollback.
	Commits   int64 `json:"xact_commit"`
	Rollbacks int64 `json:"xact_rollback"`
	// Inserted, Updated and Deleted are its tup_inserted, tup_updated,
	// tup_deleted: rows of every table.
	Inserted int64 `json:"tup_inserted"`
	Updated  int64 `json:"tup_updated"`
	Deleted  int64 `json:"tup_deleted"`
	// OtherCommits is xact_commit summed over every other database: other
	// users of the shared server. In a difference (Sub), only databases
	// present at both readings count.
	OtherCommits int64 `json:"other_databases_xact_commit"`

	others map[string]int64
}

// Sub returns s − o.
func (s DBStats) Sub(o DBStats) DBStats {
	d := DBStats{Commits: s.Commits - o.Commits, Rollbacks: s.Rollbacks - o.Rollbacks, Inserted: s.Inserted - o.Inserted,
		Updated: s.Updated - o.Updated, Deleted: s.Deleted - o.Deleted}
	for name, n := range s.others {
		if before, ok := o.others[name]; ok {
			d.OtherCommits += n - before
		}
	}
	return d
}

// Stats reads pg_stat_database for database name. The counts lag the
// backends by up to pgStatsIdle (see WaitGone).
func (p *Postgres) Stats(ctx context.Context, name string) (DBStats, error) {
	s := DBStats{others: map[string]int64{}}
	rows, err := p.conn.Query(ctx, `SELECT coalesce(datname, ''), xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database`)
	if err != nil {
		return s, fmt.Errorf("pg_stat_database: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var db string
		var c, rb, ins, upd, del int64
		if err := rows.Scan(&db, &c, &rb, &ins, &upd, &del); err != nil {
			return s, fmt.Errorf("pg_stat_database: %w", err)
		}
		if db == name {
			s.Commits, s.Rollbacks, s.Inserted, s.Updated, s.Deleted = c, rb, ins, upd, del
		} else {
			s.others[db] = c
			s.OtherCommits += c
		}
	}
	if err := rows.Err(); err != nil {
		return s, fmt.Errorf("pg_stat_database: %w", err)
	}
	return s, nil
}

// WaitGone waits until no backend is connected to database name, then
// until its pg_stat_database reading stops changing (an exiting backend
// reports its last counts), and returns that reading.
func (p *Postgres) WaitGone(ctx context.Context, name string, timeout time.Duration) (DBStats, error) {
	deadline := time.Now().Add(timeout)
	for {
		var n int
		if err := p.conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1`, name).Scan(&n); err != nil {
			return DBStats{}, fmt.Errorf("pg_stat_activity: %w", err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			return DBStats{}, fmt.Errorf("database %s: %d backends still connected after %v", name, n, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	last, err := p.Stats(ctx, name)
	for err == nil {
		time.Sleep(200 * time.Millisecond)
		var s DBStats
		if s, err = p.Stats(ctx, name); err == nil {
			if s.Commits == last.Commits && s.Inserted == last.Inserted && s.Deleted == last.Deleted {
				return s, nil
			}
			last = s
		}
	}
	return last, err
}

// parentPID returns the parent process id of pid.
func parentPID(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errors.New("no PPid in /proc/" + strconv.Itoa(pid) + "/status")
}
