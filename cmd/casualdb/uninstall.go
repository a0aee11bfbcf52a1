package main

import (
	"context"
	"fmt"

	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/meta"
)

func (m *Main) uninstallCmd(ctx context.Context, args []string) error {
	cfg, err := m.parseConfig("uninstall", args)
	if err != nil {
		return err
	}
	if err := Uninstall(ctx, cfg); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "removed slot %s, publication %s, casualdb replication origins and the casualdb schema\n", cfg.SlotName(), cfg.Database.Publication)
	return nil
}

// Uninstall removes everything CasualDB created in the site's database.
func Uninstall(ctx context.Context, cfg Config) error {
	conn, err := connect(ctx, cfg.Database.DSN, cfg.Database.ConnectTimeout, "uninstall")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	if err := capture.Uninstall(ctx, conn, cfg.SlotName(), cfg.Database.Publication); err != nil {
		return err
	}
	if err := apply.DropOrigins(ctx, conn); err != nil {
		return err
	}
	return meta.Uninstall(ctx, conn)
}
