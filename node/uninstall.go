package node

import (
	"context"
	"fmt"

	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// Uninstall removes everything CasualDB created in the site's database.
func Uninstall(ctx context.Context, cfg Config) error {
	cctx, cancel := context.WithTimeout(ctx, cfg.Database.ConnectTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, cfg.Database.DSN)
	if err != nil {
		return fmt.Errorf("connect to database (database.dsn): %w", err)
	}
	defer conn.Close(context.Background())
	if err := capture.Uninstall(ctx, conn, cfg.SlotName(), cfg.Database.Publication); err != nil {
		return err
	}
	if err := apply.DropOrigins(ctx, conn); err != nil {
		return err
	}
	return meta.Uninstall(ctx, conn)
}
