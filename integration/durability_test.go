package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
)

// TestDurability_WaitDurable: casualdb.wait_durable() returns once a write
// is held by cluster.w (2) sites, fails with a clear error while a's
// sidecar cannot ship anywhere, and a write it acknowledged survives the
// loss of site a.
func TestDurability_WaitDurable(t *testing.T) {
	c := newClusterWith(t, clusterOptions{Sites: 3, Links: true, Schema: `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)`})
	c.exec(0, `INSERT INTO kv VALUES (1, 'first')`)
	if got, err := c.queryString(0, `SELECT casualdb.wait_durable('30 seconds')::text`); err != nil || got == "" {
		t.Fatalf("wait_durable with every link up: %q, %v", got, err)
	}

	c.cut(0, 1)
	c.cut(0, 2)
	c.exec(0, `INSERT INTO kv VALUES (2, 'while a ships nowhere')`)
	_, err := c.queryString(0, `SELECT casualdb.wait_durable('1 second')::text`)
	if err == nil || !strings.Contains(err.Error(), "are not held by 2 sites") {
		t.Fatalf("wait_durable with a cut off: %v, want the not-W-durable error", err)
	}
	st := status(t, c, 0)["capture"].(map[string]any)
	if st["w_durable_seq"].(float64) >= st["outbox_last_seq"].(float64) {
		t.Errorf("status: w_durable_seq %v, outbox_last_seq %v: want it behind", st["w_durable_seq"], st["outbox_last_seq"])
	}
	if m := metrics(t, c, 0); strings.Contains(m, "casualdb_not_w_durable_transactions 0\n") {
		t.Errorf("metrics say every transaction is W-durable:\n%s", grepLines(m, "w_durable"))
	}

	c.heal(0, 1)
	if _, err := c.queryString(0, `SELECT casualdb.wait_durable('60 seconds')::text`); err != nil {
		t.Fatalf("wait_durable once a->b heals: %v", err)
	}
	// Acknowledged as W-durable: a can go, b has the write.
	c.kill(0)
	if err := c.sites[0].pg.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		got, err := c.queryString(1, `SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv`)
		if err != nil || got != "1=first,2=while a ships nowhere" {
			return fmt.Errorf("site b holds %q, %v", got, err)
		}
		return nil
	})
}
