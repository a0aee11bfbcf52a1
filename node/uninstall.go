package node

import (
	"context"

	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// Uninstall removes everything CasualDB created in the site's database, on
// conn: the slot and publication of cfg, every casualdb replication origin
// and the casualdb schema.
func Uninstall(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	if err := capture.Uninstall(ctx, conn, cfg.SlotName(), cfg.Database.Publication); err != nil {
		return err
	}
	if err := apply.DropOrigins(ctx, conn); err != nil {
		return err
	}
	return meta.Uninstall(ctx, conn)
}
