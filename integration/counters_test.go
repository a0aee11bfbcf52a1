package integration

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// restartWith stops every sidecar, sets the extra config lines, and starts
// them all again.
func (c *cluster) restartWith(extra ...string) {
	c.t.Helper()
	for i := range c.sites {
		c.stop(i)
	}
	c.extra = extra
	for i := range c.sites {
		c.start(i)
	}
	for i := range c.sites {
		c.waitHealthy(i)
	}
}

// counterIncrements is how many increments each site makes: the issue's
// 1,000 (about two seconds of writing), 10,000 with CASUALDB_LONG set.
func counterIncrements() int {
	if os.Getenv("CASUALDB_LONG") != "" {
		return 10000
	}
	return 1000
}

// TestCounters_ConcurrentIncrementsAllCount increments one balance at all
// three sites at once, with a sidecar killed and restarted in the middle,
// and checks that every site ends with exactly the sum of every increment.
func TestCounters_ConcurrentIncrementsAllCount(t *testing.T) {
	c := newCluster(t, 3, `CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text)`)
	c.restartWith("conflicts:", "  tables:", "    accounts:", "      counters: [balance]")
	if got, err := c.queryString(0, `SELECT relreplident::text FROM pg_class WHERE relname = 'accounts'`); err != nil || got != "f" {
		t.Fatalf("replica identity of accounts: %s, %v; want f (FULL), set by the sidecar", got, err)
	}
	c.exec(0, `INSERT INTO accounts VALUES (1, 100, 'opened at a')`)
	c.waitConverged(30*time.Second, "accounts")

	n := counterIncrements()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(c.sites))
	halfway := make(chan struct{})
	for i := range c.sites {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, c.sites[i].pg.DSN())
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			for j := range n {
				sql := `UPDATE accounts SET balance = balance + 10 WHERE id = 1`
				if j%50 == 0 {
					// Now and then another column changes too.
					sql = fmt.Sprintf(`UPDATE accounts SET balance = balance + 10, note = 'site %s step %d' WHERE id = 1`, c.sites[i].name, j)
				}
				if _, err := conn.Exec(ctx, sql); err != nil {
					errs <- fmt.Errorf("site %s: %w", c.sites[i].name, err)
					return
				}
				if i == 0 && j == n/2 {
					close(halfway)
				}
			}
		}(i)
	}
	<-halfway
	// Redelivery: b's sidecar is killed mid-stream and comes back.
	c.kill(1)
	c.start(1)
	c.waitHealthy(1)
	wg.Wait()
	t.Logf("%d increments at each site written in %s", n, time.Since(start).Round(time.Millisecond))
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c.waitConverged(2*time.Minute, "accounts")
	t.Logf("converged %s after the start", time.Since(start).Round(time.Millisecond))
	want := strconv.Itoa(100 + 3*n*10)
	for i := range c.sites {
		got, err := c.queryString(i, `SELECT balance::text FROM accounts WHERE id = 1`)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("site %s: balance %s, want %s (every increment exactly once)", c.sites[i].name, got, want)
		}
	}
}
