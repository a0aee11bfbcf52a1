package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/node"
	"github.com/jackc/pgx/v5"
)

// setupRoleCmd prints (or, with --apply, runs) the SQL that lets a role that
// is not a superuser run the sidecar of the configuration.
func (m *Main) setupRoleCmd(ctx context.Context, args []string) error {
	var role, dsn string
	var apply bool
	cfg, err := m.parseConfig("setup-role", args, func(fs *flag.FlagSet) {
		fs.StringVar(&role, "role", "", "the sidecar's role (default: the user of database.dsn)")
		fs.StringVar(&dsn, "superuser-dsn", "", "where to read the catalog and, with --apply, run the SQL as a superuser (default: database.dsn)")
		fs.BoolVar(&apply, "apply", false, "run the SQL (in one transaction), not only print it")
	})
	if err != nil {
		return err
	}
	if dsn == "" {
		dsn = cfg.Database.DSN
	}
	if role == "" {
		pc, err := pgx.ParseConfig(cfg.Database.DSN)
		if err != nil {
			return fmt.Errorf("%w: database.dsn: %v", casualdb.ErrConfig, err)
		}
		role = pc.User
	}
	if role == "" {
		return fmt.Errorf("%w: setup-role: name the role (--role), database.dsn names no user", casualdb.ErrConfig)
	}
	log := slog.New(slog.NewTextHandler(m.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	stmts, err := node.SetupRole(ctx, cfg, dsn, role, apply, log)
	if err != nil {
		return err
	}
	if apply {
		fmt.Fprintf(m.Stdout, "role %s may now run the sidecar of site %s (%d statements run)\n", role, cfg.Site, len(stmts))
		return nil
	}
	fmt.Fprintf(m.Stdout, "-- run as a superuser in the sidecar's database (or: casualdb setup-role --apply)\nBEGIN;\n%s;\nCOMMIT;\n", strings.Join(stmts, ";\n"))
	return nil
}
