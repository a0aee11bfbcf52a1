package node

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
)

// TestNode_LeastPrivilege: two sites whose sidecars run as roles that are
// not superusers, set up by SetupRole, replicate both ways (apply's replica
// sessions, replication origins, the slot, the casualdb schema). Before
// that, a role lacking one grant is refused at start with the grant named.
func TestNode_LeastPrivilege(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tune := func(cfg *Config) {
		role := "casualdb_" + cfg.Site
		stmts, err := SetupRole(ctx, *cfg, cfg.Database.DSN, role, true, log)
		if err != nil {
			t.Fatalf("setup-role: %v", err)
		}
		quoted := `"` + role + `"`
		for _, want := range []string{"GRANT SET ON PARAMETER session_replication_role TO " + quoted, `ALTER TABLE "public"."items" REPLICA IDENTITY FULL`,
			`ALTER PUBLICATION "casualdb" ADD TABLE "public"."items"`} {
			if !strings.Contains(strings.Join(stmts, "\n"), want) {
				t.Errorf("setup-role's SQL lacks %q:\n%s", want, strings.Join(stmts, "\n"))
			}
		}
		super := cfg.Database.DSN
		cfg.Database.DSN = strings.Replace(super, "postgres://postgres@", "postgres://"+role+"@", 1)
		var isSuper bool
		if err := pgtest.Connect(t, cfg.Database.DSN).QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&isSuper); err != nil || isSuper {
			t.Fatalf("the sidecar's role is a superuser (%v) or unknown: %v", isSuper, err)
		}
		if cfg.Site != "a" {
			return
		}
		// One grant missing: refused, and told which.
		pgtest.ExecAll(t, pgtest.Connect(t, super), `REVOKE SET ON PARAMETER session_replication_role FROM `+role,
			`REVOKE INSERT ON items FROM `+role)
		_, err = Prepare(ctx, *cfg, log)
		if !errors.Is(err, casualdb.ErrDatabaseSetup) || !strings.Contains(err.Error(), "GRANT SET ON PARAMETER session_replication_role TO "+quoted) {
			t.Errorf("start without SET on session_replication_role: %v", err)
		}
		pgtest.ExecAll(t, pgtest.Connect(t, super), `GRANT SET ON PARAMETER session_replication_role TO `+role)
		_, err = Prepare(ctx, *cfg, log)
		if !errors.Is(err, casualdb.ErrDatabaseSetup) || !strings.Contains(err.Error(), `GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLE "public"."items" TO `+quoted) {
			t.Errorf("start without INSERT on items: %v", err)
		}
		pgtest.ExecAll(t, pgtest.Connect(t, super), `GRANT INSERT ON items TO `+role)
	}
	sites := startSitesWith(t, ctx, tune, "a", "b")
	pgtest.ExecAll(t, pgtest.Connect(t, sites[0].pg.DSN()), `INSERT INTO items VALUES (1, 'from a')`)
	waitFor(t, ctx, sites[1], `SELECT count(*)::text FROM items WHERE id = 1`, "1")
	pgtest.ExecAll(t, pgtest.Connect(t, sites[1].pg.DSN()), `INSERT INTO items VALUES (2, 'from b')`, `UPDATE items SET label = 'b was here' WHERE id = 1`)
	for _, s := range sites {
		waitFor(t, ctx, s, `SELECT string_agg(id || ':' || label, ',' ORDER BY id) FROM items`, "1:b was here,2:from b")
	}
	// Apply's writes were marked with their origin (the origin functions
	// work for the role): a's capture did not send b's update back.
	if st := sites[1].node.Status(); st.Origins["a"].Applied < 1 || !st.Healthy {
		t.Errorf("b's status: %+v", st.Origins["a"])
	}
}
