package integration

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// partitionDuration is how long TestPartition_BothSidesWrite keeps c cut
// off: a few seconds, or the 60 seconds the issue asks figures for.
func partitionDuration() time.Duration { return longOr(4 * time.Second) }

// writeLoad upserts random keys of kv at site i until stop, at most every
// few milliseconds, and returns how many transactions it committed.
func writeLoad(ctx context.Context, c *cluster, i int, stop <-chan struct{}) (int, error) {
	conn, err := pgx.Connect(ctx, c.sites[i].pg.DSN())
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	rng := rand.New(rand.NewSource(int64(i)))
	n := 0
	for {
		select {
		case <-stop:
			return n, nil
		case <-time.After(2 * time.Millisecond):
		}
		k := rng.Intn(200)
		if _, err := conn.Exec(ctx, `INSERT INTO kv VALUES ($1, $2, 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = kv.n + 1`,
			k, fmt.Sprintf("%s-%d", c.sites[i].name, n)); err != nil {
			return n, fmt.Errorf("site %s: %w", c.sites[i].name, err)
		}
		n++
	}
}

// TestPartition_BothSidesWrite cuts c off from a and b in both directions
// while all three write under load: both sides keep accepting writes, a
// and b keep converging with each other, and after the heal all three hold
// the same rows. It logs how long the catch-up took.
func TestPartition_BothSidesWrite(t *testing.T) {
	c := newClusterWith(t, clusterOptions{Sites: 3, Links: true, Schema: `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL, n int NOT NULL)`})
	c.exec(0, `INSERT INTO kv SELECT g, 'start', 0 FROM generate_series(0, 199) g`)
	c.waitConverged(60*time.Second, "kv")

	for _, p := range [][2]int{{0, 2}, {2, 0}, {1, 2}, {2, 1}} {
		c.cut(p[0], p[1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), partitionDuration()+2*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	counts := make([]int, len(c.sites))
	errs := make(chan error, len(c.sites))
	for i := range c.sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := writeLoad(ctx, c, i, stop)
			counts[i] = n
			if err != nil {
				errs <- err
			}
		}()
	}
	time.AfterFunc(partitionDuration(), func() { close(stop) })
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("during a %s partition: a %d, b %d, c %d transactions", partitionDuration(), counts[0], counts[1], counts[2])
	for i, n := range counts {
		if n == 0 {
			t.Errorf("site %s wrote nothing during the partition", c.sites[i].name)
		}
	}
	// The majority side converges on its own; c, cut off, differs.
	pgtest.CheckFor(t, 60*time.Second, 50*time.Millisecond, func() error {
		a, err1 := c.checksum(0, "kv")
		b, err2 := c.checksum(1, "kv")
		if err1 != nil || err2 != nil || a != b {
			return fmt.Errorf("a and b differ during the partition: %s vs %s (%v, %v)", a, b, err1, err2)
		}
		return nil
	})
	a, _ := c.checksum(0, "kv")
	if cs, _ := c.checksum(2, "kv"); cs == a {
		t.Errorf("c holds what a and b wrote while cut off")
	}

	defer func() {
		if t.Failed() {
			for i := 1; i < len(c.sites); i++ {
				t.Logf("rows where a and %s differ:\n%s", c.sites[i].name, c.diffRows(0, i, "kv", 10))
			}
		}
	}()
	healed := time.Now()
	for _, p := range [][2]int{{0, 2}, {2, 0}, {1, 2}, {2, 1}} {
		c.heal(p[0], p[1])
	}
	c.waitConverged(2*time.Minute, "kv")
	t.Logf("converged %s after the heal", time.Since(healed).Round(time.Millisecond))
}

// diffRows lists up to limit rows of table (with their recorded versions)
// that differ between sites i and j, for a failing test's log.
func (c *cluster) diffRows(i, j int, table string, limit int) string {
	q := fmt.Sprintf(`SELECT t::text || ' @ ' || coalesce((SELECT hlc_wall || '.' || hlc_logical || '/' || origin
		FROM casualdb.row_version v WHERE v.tbl = 'public.%s' AND v.key = json_build_array(t.k::text)::text), '-')
		FROM %s t ORDER BY 1`, table, table)
	rows := func(i int) map[string]bool {
		out := map[string]bool{}
		conn, err := pgx.Connect(context.Background(), c.sites[i].pg.DSN())
		if err != nil {
			return out
		}
		defer conn.Close(context.Background())
		rs, err := conn.Query(context.Background(), q)
		if err != nil {
			out["query failed: "+err.Error()] = true
			return out
		}
		defer rs.Close()
		for rs.Next() {
			var r string
			if rs.Scan(&r) == nil {
				out[r] = true
			}
		}
		return out
	}
	a, b := rows(i), rows(j)
	var out []string
	for r := range a {
		if !b[r] && len(out) < limit {
			out = append(out, c.sites[i].name+" only: "+r)
		}
	}
	for r := range b {
		if !a[r] && len(out) < 2*limit {
			out = append(out, c.sites[j].name+" only: "+r)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}
