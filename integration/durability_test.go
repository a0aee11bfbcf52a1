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

// TestDurability_SurvivesOriginLoss: with gossip, a's writes reach only b
// (a->c is cut); wait_durable acknowledges them (a and b hold them); then
// site a is lost for good, sidecar and PostgreSQL. b, seeing a down, relays
// to c the transactions of a that c had not applied (relay hints), and the
// surviving sites converge on every table.
func TestDurability_SurvivesOriginLoss(t *testing.T) {
	c := newHintClusterWith(t, clusterOptions{Links: true})

	c.cut(0, 2)
	for k := 1; k <= 5; k++ {
		c.exec(0, `INSERT INTO kv VALUES ($1, 'acknowledged by a and b')`, k)
	}
	if _, err := c.queryString(0, `SELECT casualdb.wait_durable('30 seconds')::text`); err != nil {
		t.Fatalf("wait_durable with a->b up: %v", err)
	}
	if got, _ := c.queryString(2, `SELECT count(*)::text FROM kv`); got != "1" {
		t.Fatalf("c holds %s rows with a->c cut, want 1", got)
	}
	// Site a is lost.
	c.kill(0)
	if err := c.sites[0].pg.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	c.waitStates(1, "a=dead b=alive c=alive")
	pgtest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		for _, i := range []int{1, 2} {
			got, err := c.queryString(i, `SELECT count(*)::text FROM kv`)
			if err != nil || got != "6" {
				return fmt.Errorf("site %s holds %s rows, %v; want 6", c.sites[i].name, got, err)
			}
		}
		return nil
	})
	b, err1 := c.checksum(1, "kv")
	cs, err2 := c.checksum(2, "kv")
	if err1 != nil || err2 != nil || b != cs {
		t.Errorf("b and c differ after a's loss: %s vs %s (%v, %v)", b, cs, err1, err2)
	}
	if n, _ := peerField(t, c, 1, "c", "relay_hints").(float64); n < 5 {
		t.Errorf("b relayed %v of a's transactions to c, want at least 5", n)
	}
}
