package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/ship"
	"github.com/nats-io/nats.go/jetstream"
)

const linkSchema = `CREATE TABLE ev (id int PRIMARY KEY, origin text NOT NULL);`

// countEv returns how many rows of ev site i holds with ids in [from, to).
func countEv(c *cluster, i, from, to int) (int, error) {
	s, err := c.queryString(i, `SELECT count(*)::text FROM ev WHERE id >= $1 AND id < $2`, from, to)
	if err != nil {
		return 0, err
	}
	var n int
	_, err = fmt.Sscan(s, &n)
	return n, err
}

// waitEv waits until site i holds every id in [from, to).
func waitEv(t *testing.T, c *cluster, i, from, to int) {
	t.Helper()
	pgtest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		n, err := countEv(c, i, from, to)
		if err != nil {
			return err
		}
		if n != to-from {
			return fmt.Errorf("site %s holds %d of ids [%d, %d)", c.sites[i].name, n, from, to)
		}
		return nil
	})
}

// writeEv inserts ids [from, to) at site i, one transaction each.
func writeEv(c *cluster, i, from, to int) {
	c.t.Helper()
	for id := from; id < to; id++ {
		c.exec(i, `INSERT INTO ev VALUES ($1, $2)`, id, c.sites[i].name)
	}
}

// shipped returns how many transactions site i's sidecar has shipped to
// site j (j's inbox acknowledged them).
func shipped(t *testing.T, c *cluster, i, j int) float64 {
	t.Helper()
	peers, _ := status(t, c, i)["peers"].(map[string]any)
	peer, _ := peers[c.sites[j].name].(map[string]any)
	n, _ := peer["shipped_transactions"].(float64)
	return n
}

// checkWithheld checks, rounds times, that site to holds none of ids
// [from, end) while what site via ships still reaches it: each round, via
// writes a probe (ids from probeFrom on) and to's inbox must acknowledge it
// first. (to may not apply the probes yet: via wrote them after applying
// the withheld rows, so they causally depend on them.)
func checkWithheld(t *testing.T, c *cluster, via, to, from, end, probeFrom, rounds int) {
	t.Helper()
	for r := range rounds {
		before := shipped(t, c, via, to)
		writeEv(c, via, probeFrom+r, probeFrom+r+1)
		pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
			if n := shipped(t, c, via, to); n <= before {
				return fmt.Errorf("site %s has shipped %v transactions to %s, want more than %v", c.sites[via].name, n, c.sites[to].name, before)
			}
			return nil
		})
		if n, err := countEv(c, to, from, end); err != nil || n != 0 {
			t.Fatalf("site %s holds %d of ids [%d, %d) (%v) although the link to it is down", c.sites[to].name, n, from, end, err)
		}
	}
}

// TestLink_CutOneDirection cuts a->c only: a's writes reach b but not c, b
// still reaches c, and once the link heals c catches up.
func TestLink_CutOneDirection(t *testing.T) {
	const a, b, cc = 0, 1, 2
	c := newClusterWith(t, clusterOptions{Sites: 3, Schema: linkSchema, Links: true})
	writeEv(c, a, 0, 1)
	c.waitConverged(60*time.Second, "ev") // every sidecar has shipped through its link

	c.cut(a, cc)
	writeEv(c, a, 100, 120)
	waitEv(t, c, b, 100, 120)
	checkWithheld(t, c, b, cc, 100, 120, 1000, 3)
	// c still ships to a and b.
	writeEv(c, cc, 2000, 2001)
	waitEv(t, c, a, 2000, 2001)
	waitEv(t, c, b, 2000, 2001)

	c.heal(a, cc)
	c.waitConverged(60*time.Second, "ev")
	waitEv(t, c, cc, 100, 120)
}

// TestLink_HoldOneDirection holds a->c: nothing a ships reaches c until the
// hold ends (the sidecar's publish times out meanwhile, and it reconnects
// into the hold), then everything arrives and nothing is parked.
func TestLink_HoldOneDirection(t *testing.T) {
	const a, b, cc = 0, 1, 2
	c := newClusterWith(t, clusterOptions{Sites: 3, Schema: linkSchema, Links: true})
	writeEv(c, a, 0, 1)
	c.waitConverged(60*time.Second, "ev")

	c.hold(a, cc)
	link := c.link(a, cc)
	conns := link.Accepted()
	writeEv(c, a, 100, 110)
	waitEv(t, c, b, 100, 110)
	checkWithheld(t, c, b, cc, 100, 110, 1000, 3)
	// Hold until a's sidecar has given up on its connection (no
	// acknowledgement in 10s) and dialled again: what it published on the
	// old one is still in the hold and arrives late, besides the shipper's
	// second publication of it.
	pgtest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		if link.Accepted() == conns {
			return fmt.Errorf("a's sidecar has not reconnected to c during the hold (%d connections)", conns)
		}
		return nil
	})
	checkWithheld(t, c, b, cc, 100, 110, 1100, 1)

	c.heal(a, cc)
	c.waitConverged(60*time.Second, "ev")
	waitEv(t, c, cc, 100, 110)
	if n, err := c.queryString(cc, `SELECT count(*)::text FROM casualdb.parked`); err != nil || n != "0" {
		t.Errorf("site c parked %s changes, %v; want 0", n, err)
	}
}

// TestLink_CutWhileShipping: a's shipper to c fails to publish transaction
// 2 (the link is cut) and hands it back, so transactions 3.. may reach the
// shipper first and 2 behind them. Once the link heals c must get them
// all; the shipper used to bundle them as [3 .. n, 2], and apply at c,
// meeting 3 first, handed the bundle back again and again: a's
// transactions never applied at c. (The shipper now re-creates its
// consumer from its acknowledgement floor after a failed session, which
// restores outbox order; either path must end with c holding all.)
func TestLink_CutWhileShipping(t *testing.T) {
	const a, b, cc = 0, 1, 2
	c := newClusterWith(t, clusterOptions{Sites: 3, Schema: linkSchema, Links: true})
	writeEv(c, a, 0, 1)
	c.waitConverged(60*time.Second, "ev")

	c.cut(a, cc)
	cutAt := time.Now()
	writeEv(c, a, 100, 101)
	// The shipper's session fails on that publish and NAKs it for 1s: write
	// the rest at once, so that they overtake it.
	pgtest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		peers, _ := status(t, c, a)["peers"].(map[string]any)
		if peer, _ := peers[c.sites[cc].name].(map[string]any); peer["connected"] != false {
			return fmt.Errorf("site a still counts c as connected: %v", peer)
		}
		return nil
	})
	writeEv(c, a, 101, 110)
	waitEv(t, c, b, 100, 110)
	// Heal once the shipper has recovered from the failed publish: the
	// outbox redelivered transaction 2 behind the others, or the shipper
	// re-created its consumer from its acknowledgement floor.
	nc := c.natsAs(a, c.sites[a].name) // a's own certificate: its consumers
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	pgtest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cons, err := js.Consumer(ctx, ship.OutboxStream("a"), ship.ConsumerName("c"))
		if err != nil {
			return err
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumRedelivered == 0 && !info.Created.After(cutAt) {
			return fmt.Errorf("a's shipper to c has neither had a redelivery nor a new consumer yet: %+v", info)
		}
		return nil
	})
	c.heal(a, cc)
	waitEv(t, c, cc, 100, 110)
}
