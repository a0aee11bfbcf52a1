package integration

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLifecycle_RestartIdempotentAndUninstall restarts a sidecar (nothing is
// created twice), checks the admin endpoints, then uninstalls it cleanly.
func TestLifecycle_RestartIdempotentAndUninstall(t *testing.T) {
	c := newCluster(t, 3, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE nokey (v text)`)
	c.exec(0, `INSERT INTO t VALUES (1, 'x')`)
	c.waitConverged(30*time.Second, "t")
	c.stop(0)
	c.start(0)
	c.waitHealthy(0)
	counts := `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'casualdb%') || ',' ||
		(SELECT count(*) FROM pg_publication WHERE pubname = 'casualdb') || ',' ||
		(SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'casualdb%') || ',' ||
		(SELECT string_agg(tablename, ' ' ORDER BY tablename DESC) FROM pg_publication_tables WHERE pubname = 'casualdb')`
	if got, err := c.queryString(0, counts); err != nil || got != "1,1,2,t heartbeat" {
		t.Errorf("after restart: slots,publications,origins,tables = %q, %v; want 1,1,2,t heartbeat", got, err)
	}
	c.exec(1, `INSERT INTO t VALUES (2, 'y')`)
	c.waitConverged(30*time.Second, "t")

	m := metrics(t, c, 0)
	for _, name := range []string{"casualdb_captured_transactions_total", `casualdb_shipped_transactions_total{peer="b"}`,
		`casualdb_applied_transactions_total{origin="b"}`, `casualdb_apply_lag_seconds{origin="b"}`, `casualdb_apply_held_transactions{origin="b"}`, "casualdb_conflicts_total",
		"casualdb_slot_retained_wal_bytes", `casualdb_component_up{component="capture"} 1`} {
		if !strings.Contains(m, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	st := status(t, c, 0)
	if st["healthy"] != true || st["site"] != "a" {
		t.Errorf("/status: healthy=%v site=%v", st["healthy"], st["site"])
	}
	if origins := st["origins"].(map[string]any); origins["b"] == nil {
		t.Errorf("/status lacks origin b: %v", st["origins"])
	}

	c.stop(0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "uninstall", "--config", filepath.Join(c.sites[0].dir, "casualdb.yml"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out.String())
	}
	gone := `SELECT (SELECT count(*) FROM pg_replication_slots) || ',' || (SELECT count(*) FROM pg_publication) || ',' ||
		(SELECT count(*) FROM pg_replication_origin) || ',' || (SELECT count(*) FROM pg_namespace WHERE nspname = 'casualdb')`
	if got, err := c.queryString(0, gone); err != nil || got != "0,0,0,0" {
		t.Errorf("after uninstall: slots,publications,origins,schema = %q, %v; want 0,0,0,0", got, err)
	}
	if got, _ := c.queryString(0, `SELECT count(*)::text FROM t`); got != "2" {
		t.Errorf("uninstall touched user data: %s rows in t, want 2", got)
	}
}
