package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// connect opens the connection of a subcommand that works on the site's
// database without the sidecar (parked, conflicts, uninstall), named
// casualdb-<command> in pg_stat_activity, within timeout
// (database.connect_timeout). It has CasualDB's canonical session settings,
// so that text values read as every site writes them. It is an ordinary
// session: no replication origin, and session_replication_role is the
// server's (origin): what it writes is a local write, which capture
// versions and ships.
func connect(ctx context.Context, dsn string, timeout time.Duration, command string) (*pgx.Conn, error) {
	pcfg, err := apply.CanonicalConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: database.dsn: %v", casualdb.ErrConfig, err)
	}
	pcfg.RuntimeParams["application_name"] = "casualdb-" + command
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database (database.dsn): %w", err)
	}
	return conn, nil
}

// closeConn closes a connection from connect, waiting at most 5 seconds.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn.Close(ctx)
}

// noSchema turns meta.ErrNotInstalled into advice; table is the table
// that was read.
func noSchema(conn *pgx.Conn, table string, err error) error {
	if errors.Is(err, meta.ErrNotInstalled) {
		return fmt.Errorf("%w in database %q (no table %s): run the sidecar (casualdb run) against it once to create it", meta.ErrNotInstalled, conn.Config().Database, table)
	}
	return err
}
