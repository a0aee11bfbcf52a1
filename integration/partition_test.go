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
	return writeLoadEvery(ctx, c, i, stop, 2*time.Millisecond)
}

// writeLoadEvery is writeLoad with a pause of every between transactions.
func writeLoadEvery(ctx context.Context, c *cluster, i int, stop <-chan struct{}, every time.Duration) (int, error) {
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
		case <-time.After(every):
		}
		k := rng.Intn(200)
		if _, err := conn.Exec(ctx, `INSERT INTO kv VALUES ($1, $2, 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = kv.n + 1`,
			k, fmt.Sprintf("%s-%d", c.sites[i].name, n)); err != nil {
			return n, fmt.Errorf("site %s: %w", c.sites[i].name, err)
		}
		n++
	}
}

// runLoad runs writeLoadEvery at every site until stop and returns what
// each committed, or the first error.
func runLoad(ctx context.Context, c *cluster, stop <-chan struct{}, every time.Duration) ([]int, error) {
	var wg sync.WaitGroup
	counts := make([]int, len(c.sites))
	errs := make(chan error, len(c.sites))
	for i := range c.sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := writeLoadEvery(ctx, c, i, stop, every)
			counts[i] = n
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return counts, <-errs
}

// lagAt returns, from site i's status, the lag of the last transaction it
// applied from origin and how many of origin's transactions it holds.
func (c *cluster) lagAt(i int, origin string) (lag time.Duration, held int) {
	c.t.Helper()
	s := c.statusNumber(i, "origins", origin, "lag_seconds")
	return time.Duration(s * float64(time.Second)), int(c.statusNumber(i, "origins", origin, "held_transactions"))
}

// TestPartition_BothSidesWrite cuts c off from a and b in both directions
// while all three write under load: both sides keep accepting writes, a
// and b keep converging with each other, and after the heal, with the load
// going on, c catches up and then all three hold the same rows. It logs
// how long the catch-up took and the lag after it.
func TestPartition_BothSidesWrite(t *testing.T) {
	c := newClusterWith(t, clusterOptions{Sites: 3, Links: true, Schema: `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL, n int NOT NULL)`})
	c.exec(0, `INSERT INTO kv SELECT g, 'start', 0 FROM generate_series(0, 199) g`)
	c.waitConverged(60*time.Second, "kv")

	for _, p := range [][2]int{{0, 2}, {2, 0}, {1, 2}, {2, 1}} {
		c.cut(p[0], p[1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*partitionDuration()+3*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	time.AfterFunc(partitionDuration(), func() { close(stop) })
	counts, err := runLoad(ctx, c, stop, 2*time.Millisecond)
	if err != nil {
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
	// Heal under a steady load (at most 50 transactions a second per site,
	// which leaves the machine room to catch up; the partition's load has
	// none): the catch-up is over once every site applies every other's
	// transactions within a second of their commit, holding none back; then
	// the lag is sampled for a while.
	stop = make(chan struct{})
	type load struct {
		counts []int
		err    error
	}
	loadDone := make(chan load, 1)
	go func() {
		n, err := runLoad(ctx, c, stop, 20*time.Millisecond)
		loadDone <- load{n, err}
	}()
	healed := time.Now()
	for _, p := range [][2]int{{0, 2}, {2, 0}, {1, 2}, {2, 1}} {
		c.heal(p[0], p[1])
	}
	var worst time.Duration
	pgtest.CheckFor(t, 2*time.Minute, 100*time.Millisecond, func() error {
		for i := range c.sites {
			for j := range c.sites {
				if i == j {
					continue
				}
				lag, held := c.lagAt(i, c.sites[j].name)
				worst = max(worst, lag)
				if lag > time.Second || held > 0 {
					return fmt.Errorf("%s applies %s's transactions %s late, holding %d", c.sites[i].name, c.sites[j].name, lag, held)
				}
			}
		}
		return nil
	})
	caughtUp := time.Since(healed)
	var lags []time.Duration
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
		for _, o := range []string{"a", "b"} {
			lag, _ := c.lagAt(2, o)
			lags = append(lags, lag)
		}
		select {
		case <-time.After(100 * time.Millisecond): // a sampling interval, not a wait for a condition
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	close(stop)
	ld := <-loadDone
	if ld.err != nil {
		t.Fatal(ld.err)
	}
	after := ld.counts
	c.waitConverged(2*time.Minute, "kv")
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	t.Logf("after the heal, under load (a %d, b %d, c %d more transactions): caught up in %s (worst lag seen %s); then lag at c p50 %s, max %s; converged %s after the heal",
		after[0], after[1], after[2], caughtUp.Round(time.Millisecond), worst.Round(time.Millisecond),
		lags[len(lags)/2].Round(time.Millisecond), lags[len(lags)-1].Round(time.Millisecond), time.Since(healed).Round(time.Millisecond))
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
