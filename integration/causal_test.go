package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
)

// statusNumber reads a number from site i's /status: section, then key (and
// for "peers", the peer's name in between).
func (c *cluster) statusNumber(i int, path ...string) float64 {
	c.t.Helper()
	var cur any = status(c.t.(*testing.T), c, i)
	for _, p := range path {
		m, _ := cur.(map[string]any)
		cur = m[p]
	}
	n, _ := cur.(float64)
	return n
}

// TestCausal_ChildNeverBeforeParent holds a's transactions back from c:
// b inserts a child row after it applied its parent from a, and c, which
// has b's transaction in its inbox but not a's, must not apply the child
// until it has applied the parent.
func TestCausal_ChildNeverBeforeParent(t *testing.T) {
	const a, b, cc = 0, 1, 2
	c := newClusterWith(t, clusterOptions{Sites: 3, Links: true, Schema: `
		CREATE TABLE parent (id int PRIMARY KEY, name text);
		CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id), name text);`})
	c.exec(a, `INSERT INTO parent VALUES (0, 'warm-up')`)
	c.waitConverged(30*time.Second, "parent")

	c.cut(a, cc)
	c.exec(a, `INSERT INTO parent VALUES (1, 'from a')`)
	pgtest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if got, _ := c.queryString(b, `SELECT count(*)::text FROM parent WHERE id = 1`); got != "1" {
			return fmt.Errorf("b has not applied the parent yet")
		}
		return nil
	})
	shipped := c.statusNumber(b, "peers", "c", "shipped_transactions")
	waits := c.statusNumber(cc, "apply", "dependency_waits")
	c.exec(b, `INSERT INTO child VALUES (10, 1, 'from b, after the parent')`)
	// b's transaction reaches c's inbox, and c holds it back.
	pgtest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if got := c.statusNumber(b, "peers", "c", "shipped_transactions"); got <= shipped {
			return fmt.Errorf("b has not shipped the child to c yet")
		}
		if got := c.statusNumber(cc, "apply", "dependency_waits"); got <= waits {
			return fmt.Errorf("c has not held anything back yet")
		}
		return nil
	})
	// Held back, and what b writes after it with it (b's order): c holds
	// both, applies neither.
	c.exec(b, `INSERT INTO parent VALUES (2, 'from b, after the child')`)
	pgtest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if got := c.statusNumber(cc, "origins", "b", "held_transactions"); got != 2 {
			return fmt.Errorf("c holds %v of b's transactions, want 2", got)
		}
		return nil
	})
	if got, _ := c.queryString(cc, `SELECT count(*)::text FROM child`); got != "0" {
		t.Fatalf("c applied b's child before a's parent: %s child rows", got)
	}
	if got, _ := c.queryString(cc, `SELECT count(*)::text FROM parent WHERE id = 2`); got != "0" {
		t.Fatalf("c applied b's later transaction before the one it holds back")
	}
	c.heal(a, cc)
	c.waitConverged(60*time.Second, "parent", "child")
	for i := range c.sites {
		if got, _ := c.queryString(i, `SELECT count(*)::text FROM child WHERE parent_id NOT IN (SELECT id FROM parent)`); got != "0" {
			t.Errorf("site %s: %s orphan children", c.sites[i].name, got)
		}
	}
}
