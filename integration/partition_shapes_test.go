package integration

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// shapesSchema is kv as TestPartition_BothSidesWrite has it (random keys
// upserted by every site: the rows the sites fight over) plus ledger, one
// row per transaction a writer committed, never overwritten: counting a
// site's ledger rows by writer tells exactly how many of that writer's
// transactions the site holds.
const shapesSchema = `
CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL, n int NOT NULL);
CREATE TABLE ledger (shape text NOT NULL, site text NOT NULL, n int NOT NULL, PRIMARY KEY (shape, site, n));
`

// shapeDuration is how long each shape of TestPartition_Shapes lasts under
// load: a few seconds, or a minute with CASUALDB_LONG.
func shapeDuration() time.Duration { return longOr(3 * time.Second) }

// shapeLoad is writeLoad with a ledger: each transaction upserts a random
// key of kv (value "<shape>/<site>-<n>") and inserts its own ledger row, in
// one statement, until stop. It returns how many transactions it committed.
func shapeLoad(ctx context.Context, c *cluster, i int, shape string, stop <-chan struct{}) (int, error) {
	conn, err := pgx.Connect(ctx, c.sites[i].pg.DSN())
	if err != nil {
		return 0, fmt.Errorf("connect to %s: %w", c.sites[i].name, err)
	}
	defer conn.Close(context.Background())
	rng := rand.New(rand.NewSource(int64(i)))
	name := c.sites[i].name
	n := 0
	for {
		select {
		case <-stop:
			return n, nil
		case <-time.After(2 * time.Millisecond):
		}
		if _, err := conn.Exec(ctx, `WITH l AS (INSERT INTO ledger VALUES ($1, $2, $3))
			INSERT INTO kv VALUES ($4, $5, 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = kv.n + 1`,
			shape, name, n, rng.Intn(200), fmt.Sprintf("%s/%s-%d", shape, name, n)); err != nil {
			return n, fmt.Errorf("write %d at %s: %w", n, name, err)
		}
		n++
	}
}

// ledgerCount is how many of writer's transactions of shape site i holds.
func ledgerCount(c *cluster, i int, shape, writer string) (int, error) {
	s, err := c.queryString(i, `SELECT count(*)::text FROM ledger WHERE shape = $1 AND site = $2`, shape, writer)
	if err != nil {
		return 0, fmt.Errorf("count %s's ledger at %s: %w", writer, c.sites[i].name, err)
	}
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		return 0, fmt.Errorf("count %s's ledger at %s: %w", writer, c.sites[i].name, err)
	}
	return n, nil
}

// What a site gets, while the partition lasts, of what another site writes
// during it (partitionShape.reach).
const (
	// reachAll: every transaction of the writer arrives.
	reachAll = 'A'
	// reachNone: nothing arrives; the writer's link to the site is cut.
	reachNone = 'N'
	// reachStalled: the link is open, but only the first few arrive. The
	// writer applies partition writes of a third site whose own link to
	// this site is cut, and so its transactions from then on depend on
	// transactions this site cannot get: causal delivery holds them until
	// the heal. (No site relays another origin's transactions.)
	reachStalled = 'S'
)

// partitionShape is one way to partition three sites a, b, c, and what it
// does to transactions written during it.
type partitionShape struct {
	name string
	// cuts are the links (i ships to j) cut while the partition lasts.
	cuts [][2]int
	// reach[i][j] is reachAll, reachNone or reachStalled: what site i gets
	// of site j's writes while partitioned ('.' for i == j).
	reach [3]string
	// together are pairs of sites that hold the same rows (the same
	// checksum of every table) while partitioned, once the load stops.
	together [][2]int
}

// TestPartition_Shapes partitions three sites in shapes other than one site
// cut off both ways (TestPartition_BothSidesWrite), on the shipping links
// (the static peers list: with gossip on, sidecars learn peers' real NATS
// addresses and bypass the links, and gossip itself, UDP and TCP, has no
// proxy). Every site writes under load throughout. While partitioned, each
// site must have exactly what the shape lets through (partitionShape.reach)
// and the sites that can talk must agree; after the heal every site holds
// the same rows of every table and every transaction of every writer. Each
// shape logs how long the convergence after the heal took.
func TestPartition_Shapes(t *testing.T) {
	const a, b, cc = 0, 1, 2
	shapes := []partitionShape{{
		// Every site alone: each keeps writing, nobody gets anything.
		name: "split",
		cuts: [][2]int{{a, b}, {b, a}, {a, cc}, {cc, a}, {b, cc}, {cc, b}},
		reach: [3]string{
			".NN",
			"N.N",
			"NN.",
		},
	}, {
		// a cannot ship to c, c still ships to a. a and b get everything
		// and agree; c gets nothing of a's, and only the first of b's:
		// b has applied a's writes, which c cannot get.
		name: "asymmetric",
		cuts: [][2]int{{a, cc}},
		reach: [3]string{
			".AA",
			"A.A",
			"NS.",
		},
		together: [][2]int{{a, b}},
	}, {
		// a and b cannot talk, both still talk to c. c gets everything
		// of both; a and b get none of each other's, and only the first
		// of c's: c has applied the other one's writes.
		name: "non-transitive",
		cuts: [][2]int{{a, b}, {b, a}},
		reach: [3]string{
			".NS",
			"N.S",
			"AA.",
		},
	}}
	for _, sh := range shapes {
		t.Run(sh.name, func(t *testing.T) { testPartitionShape(t, sh) })
	}
}

func testPartitionShape(t *testing.T, sh partitionShape) {
	c := newClusterWith(t, clusterOptions{Sites: 3, Links: true, Schema: shapesSchema})
	c.exec(0, `INSERT INTO kv SELECT g, 'start', 0 FROM generate_series(0, 199) g`)
	c.waitConverged(60*time.Second, "kv", "ledger")
	defer func() {
		if t.Failed() {
			for i := 1; i < len(c.sites); i++ {
				t.Logf("rows where a and %s differ:\n%s", c.sites[i].name, c.diffRows(0, i, "kv", 10))
			}
		}
	}()

	for _, l := range sh.cuts {
		c.cut(l[0], l[1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), shapeDuration()+3*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	counts := make([]int, len(c.sites))
	errs := make([]error, len(c.sites))
	for i := range c.sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts[i], errs[i] = shapeLoad(ctx, c, i, sh.name, stop)
		}()
	}
	time.AfterFunc(shapeDuration(), func() { close(stop) })
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("site %s stopped accepting writes: %v", c.sites[i].name, err)
		}
		if counts[i] == 0 {
			t.Fatalf("site %s wrote nothing during the partition", c.sites[i].name)
		}
	}
	t.Logf("%s: during a %s partition: a %d, b %d, c %d transactions", sh.name, shapeDuration(), counts[0], counts[1], counts[2])

	// What must get through gets through, and the sites that can talk
	// agree, while still partitioned.
	start := time.Now()
	for i := range c.sites {
		for j := range c.sites {
			if sh.reach[i][j] != reachAll {
				continue
			}
			pgtest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
				got, err := ledgerCount(c, i, sh.name, c.sites[j].name)
				if err != nil {
					return err
				}
				if got != counts[j] {
					return fmt.Errorf("while partitioned, %s holds %d of the %d transactions %s wrote", c.sites[i].name, got, counts[j], c.sites[j].name)
				}
				return nil
			})
		}
	}
	for _, p := range sh.together {
		pgtest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
			for _, tbl := range []string{"kv", "ledger"} {
				x, err := c.checksum(p[0], tbl)
				if err != nil {
					return fmt.Errorf("checksum of %s at %s: %w", tbl, c.sites[p[0]].name, err)
				}
				y, err := c.checksum(p[1], tbl)
				if err != nil {
					return fmt.Errorf("checksum of %s at %s: %w", tbl, c.sites[p[1]].name, err)
				}
				if x != y {
					return fmt.Errorf("while partitioned, %s and %s differ in %s: %s vs %s", c.sites[p[0]].name, c.sites[p[1]].name, tbl, x, y)
				}
			}
			return nil
		})
	}
	if len(sh.together) > 0 || strings.ContainsRune(strings.Join(sh.reach[:], ""), reachAll) {
		t.Logf("%s: everything that can get through arrived %s after the load stopped, still partitioned", sh.name, time.Since(start).Round(time.Millisecond))
	}
	// What must not get through has not, though everything that could has
	// had all the time above (and the partition's) to arrive.
	var seen []string
	for i := range c.sites {
		for j := range c.sites {
			if i == j {
				continue
			}
			got, err := ledgerCount(c, i, sh.name, c.sites[j].name)
			if err != nil {
				t.Fatal(err)
			}
			seen = append(seen, fmt.Sprintf("%s has %d/%d of %s's", c.sites[i].name, got, counts[j], c.sites[j].name))
			switch r := sh.reach[i][j]; {
			case r == reachNone && got != 0:
				t.Errorf("while partitioned, %s holds %d transactions of %s, whose link to it is cut", c.sites[i].name, got, c.sites[j].name)
			case r == reachStalled && got >= counts[j]:
				t.Errorf("while partitioned, %s holds all %d transactions of %s, which depend on transactions it cannot have", c.sites[i].name, got, c.sites[j].name)
			}
		}
	}
	t.Logf("%s: while partitioned: %s", sh.name, strings.Join(seen, ", "))

	healed := time.Now()
	for _, l := range sh.cuts {
		c.heal(l[0], l[1])
	}
	c.waitConverged(2*time.Minute, "kv", "ledger")
	t.Logf("%s: every site converged %s after the heal", sh.name, time.Since(healed).Round(time.Millisecond))
	for i := range c.sites {
		for j := range c.sites {
			got, err := ledgerCount(c, i, sh.name, c.sites[j].name)
			if err != nil {
				t.Fatal(err)
			}
			if got != counts[j] {
				t.Errorf("after the heal, %s holds %d of the %d transactions %s wrote", c.sites[i].name, got, counts[j], c.sites[j].name)
			}
		}
	}
}
