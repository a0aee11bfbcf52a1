package main

import (
	"context"
	"fmt"

	"github.com/casualdb/casualdb/node"
)

func (m *Main) uninstallCmd(ctx context.Context, args []string) error {
	cfg, err := m.parseConfig("uninstall", args)
	if err != nil {
		return err
	}
	conn, err := connect(ctx, cfg.Database.DSN, cfg.Database.ConnectTimeout, "uninstall")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	if err := node.Uninstall(ctx, conn, cfg); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "removed slot %s, publication %s, casualdb replication origins and the casualdb schema\n", cfg.SlotName(), cfg.Database.Publication)
	return nil
}
