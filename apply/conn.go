package apply

import (
	"context"
	"fmt"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// OriginName is the replication origin under which apply writes what came
// from site.
func OriginName(site casualdb.SiteID) string { return "casualdb_" + string(site) }

// CanonicalConfig parses dsn and sets the session parameters under which
// every site renders values identically.
func CanonicalConfig(dsn string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse dsn: %w", err)
	}
	for k, v := range casualdb.CanonicalParams {
		cfg.RuntimeParams[k] = v
	}
	return cfg, nil
}

// connectOrigin opens the connection dedicated to applying origin's
// transactions: a replication origin is active in one session at a time, and
// its session state must not leak to other work.
func connectOrigin(ctx context.Context, dsn string, origin casualdb.SiteID) (*pgx.Conn, error) {
	cfg, err := CanonicalConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["session_replication_role"] = "replica"
	cfg.RuntimeParams["application_name"] = "casualdb-apply-" + string(origin)
	for k, v := range meta.KeyLookupParams {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect for origin %s: %w", origin, err)
	}
	name := OriginName(origin)
	if err := EnsureOrigin(ctx, conn, name); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	if _, err := conn.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, name); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("set up replication origin %s: %w", name, err)
	}
	return conn, nil
}

// EnsureOrigin creates the replication origin name if it does not exist.
func EnsureOrigin(ctx context.Context, conn *pgx.Conn, name string) error {
	_, err := conn.Exec(ctx, `SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)`, name)
	if err != nil {
		return fmt.Errorf("create replication origin %s: %w", name, err)
	}
	return nil
}

// DropOrigins drops every replication origin CasualDB created.
func DropOrigins(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, `SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE 'casualdb\_%'`)
	if err != nil {
		return fmt.Errorf("drop replication origins: %w", err)
	}
	return nil
}
