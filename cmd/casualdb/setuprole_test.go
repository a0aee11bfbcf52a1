package main

import (
	"strings"
	"testing"
)

// TestSetupRole: setup-role prints the SQL for a database an earlier
// sidecar set up as a superuser (the casualdb schema's objects change hands,
// the tables and the publication are granted and kept), --apply runs it,
// and afterwards nothing of the schema is left to hand over.
func TestSetupRole(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	s := newParkedSite(t)
	run := func(args ...string) string {
		t.Helper()
		var out, errOut strings.Builder
		m := &Main{Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }}
		if err := m.Run(t.Context(), append([]string{"setup-role", "--config", s.config, "--role", "cdb"}, args...)); err != nil {
			t.Fatalf("setup-role %v: %v\n%s", args, err, errOut.String())
		}
		return out.String()
	}
	sql := run()
	for _, want := range []string{
		"BEGIN;\n", `CREATE ROLE "cdb" LOGIN REPLICATION;`, `GRANT SET ON PARAMETER session_replication_role TO "cdb";`,
		`GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO "cdb";`,
		`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLE "public"."accounts" TO "cdb";`,
		`ALTER SCHEMA casualdb OWNER TO "cdb";`, `ALTER TABLE casualdb."parked" OWNER TO "cdb";`,
		`ALTER PUBLICATION "casualdb" OWNER TO "cdb";`, `ALTER PUBLICATION "casualdb" ADD TABLE "public"."notes";`, "COMMIT;\n",
	} {
		if !strings.Contains(sql, want) {
			t.Errorf("setup-role's SQL lacks %q:\n%s", want, sql)
		}
	}
	if strings.Contains(sql, `ADD TABLE "public"."accounts"`) || strings.Contains(sql, "SUPERUSER") {
		t.Errorf("setup-role adds a published table again, or makes a superuser:\n%s", sql)
	}
	if out := run("--apply"); !strings.Contains(out, "role cdb may now run the sidecar") {
		t.Errorf("setup-role --apply said %q", out)
	}
	var super, repl bool
	var owner string
	if err := s.conn.QueryRow(t.Context(), `SELECT rolsuper, rolreplication, (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'casualdb')
		FROM pg_roles WHERE rolname = 'cdb'`).Scan(&super, &repl, &owner); err != nil || super || !repl || owner != "cdb" {
		t.Errorf("after --apply: superuser %v, replication %v, schema owner %q, %v", super, repl, owner, err)
	}
	again := run()
	if strings.Contains(again, "ALTER TABLE casualdb.") || strings.Contains(again, "ADD TABLE") || !strings.Contains(again, `ALTER ROLE "cdb" LOGIN REPLICATION`) {
		t.Errorf("setup-role after --apply:\n%s", again)
	}
}
