package node

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/casualdb/casualdb/capture"
	"github.com/jackc/pgx/v5"
)

// SetupRole returns the SQL that lets role run cfg's sidecar without being a
// superuser (see capture.SetupRoleSQL), reading the catalog of the
// database at dsn; with apply it also runs it there, in one transaction,
// which takes a superuser's dsn.
func SetupRole(ctx context.Context, cfg Config, dsn, role string, apply bool, log *slog.Logger) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, cfg.Database.ConnectTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("setup-role: connect to the database: %w", err)
	}
	defer conn.Close(context.Background())
	tables, err := capture.ResolveTables(ctx, conn, cfg.Database.Tables, log)
	if err != nil {
		return nil, err
	}
	s := capture.SetupRole{Role: role, Publication: cfg.Database.Publication, Tables: tables}
	counters, merge := cfg.Conflicts.Counters(), cfg.Conflicts.MergeColumns()
	for _, t := range tables {
		always := len(counters[t.String()]) > 0 || merge[t.String()]
		need, err := capture.NeedsFullIdentity(ctx, conn, t, always, cfg.Database.ToastFullIdentity)
		if err != nil {
			return nil, fmt.Errorf("setup-role: %w", err)
		}
		if need && !slices.Contains(s.FullIdentity, t) {
			s.FullIdentity = append(s.FullIdentity, t)
		}
	}
	stmts, err := capture.SetupRoleSQL(ctx, conn, s)
	if err != nil || !apply {
		return stmts, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return stmts, fmt.Errorf("setup-role: %w", err)
	}
	defer tx.Rollback(context.Background())
	for _, st := range stmts {
		if _, err := tx.Exec(ctx, st); err != nil {
			return stmts, fmt.Errorf("setup-role: %s: %w", st, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return stmts, fmt.Errorf("setup-role: commit: %w", err)
	}
	return stmts, nil
}
