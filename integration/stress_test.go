package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// longOr is short, or a minute with CASUALDB_LONG set: how long the slow
// variants of the load tests run.
func longOr(short time.Duration) time.Duration {
	if os.Getenv("CASUALDB_LONG") != "" {
		return time.Minute
	}
	return short
}

// stressDuration is how long the stress clients write.
func stressDuration() time.Duration { return longOr(8 * time.Second) }

// stressLedger is what the clients know they committed.
type stressLedger struct {
	mu     sync.Mutex
	sums   map[int]int64 // counters: committed increments by key
	tokens []chainToken  // chain: every token appended
}

type chainToken struct {
	key   int
	token string
}

// TestStress_Convergence runs two clients per site for a while over a small
// key space: random inserts, updates and deletes (kv), appends to a few
// long-lived rows (chain), and counter increments (counters). Then it
// checks that every site holds the same tables, that every counter is the
// exact sum of its increments, and that every append is either in the final
// row or in a losing image in some site's conflict log: nothing lost
// without a trace.
func TestStress_Convergence(t *testing.T) {
	c := newCluster(t, 3, `
		CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL, n int NOT NULL DEFAULT 0);
		CREATE TABLE chain (k int PRIMARY KEY, v text NOT NULL);
		CREATE TABLE counters (k int PRIMARY KEY, total bigint NOT NULL, label text);`)
	c.restartWith("conflicts:", "  tables:", "    counters:", "      counters: [total]")
	const chains, counterKeys, kvKeys = 4, 5, 12
	for k := range chains {
		c.exec(0, fmt.Sprintf(`INSERT INTO chain VALUES (%d, 'start')`, k))
	}
	for k := range counterKeys {
		c.exec(1, fmt.Sprintf(`INSERT INTO counters VALUES (%d, 0, 'new')`, k))
	}
	c.waitConverged(30*time.Second, "chain", "counters")

	ledger := &stressLedger{sums: map[int]int64{}}
	ctx, cancel := context.WithTimeout(context.Background(), stressDuration()+time.Minute)
	defer cancel()
	deadline := time.Now().Add(stressDuration())
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(c.sites))
	for i := range c.sites {
		for client := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := stressClient(ctx, c, i, client, deadline, ledger); err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Apply catches up on a minute of hot-row conflicts slowly under -race:
	// give it time in proportion (a stall, not slowness, fails all the same).
	quiesced := time.Now()
	defer c.explainDivergence("kv")
	c.waitConverged(3*time.Minute+10*stressDuration(), "kv", "chain", "counters")
	t.Logf("converged %s after the writes stopped", time.Since(quiesced).Round(time.Millisecond))

	for k := range counterKeys {
		want := strconv.FormatInt(ledger.sums[k], 10)
		for i := range c.sites {
			got, err := c.queryString(i, `SELECT total::text FROM counters WHERE k = $1`, k)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("site %s counter %d: %s, want the sum of its increments %s", c.sites[i].name, k, got, want)
			}
		}
	}

	// Every append survives in its row, or in a losing image of a logged
	// conflict at some site.
	final := map[int]string{}
	for k := range chains {
		v, err := c.queryString(0, `SELECT v FROM chain WHERE k = $1`, k)
		if err != nil {
			t.Fatal(err)
		}
		final[k] = v
	}
	var losers strings.Builder
	conflicts := 0
	for i := range c.sites {
		v, err := c.queryString(i, `SELECT coalesce(string_agg(CASE WHEN winner = 'remote' THEN coalesce(local_row::text, '') ELSE coalesce(remote_row::text, '') END, ' '), '')
			FROM casualdb.conflict_log WHERE tbl = 'public.chain'`)
		if err != nil {
			t.Fatal(err)
		}
		losers.WriteString(v)
		n, _ := c.queryString(i, `SELECT count(*)::text FROM casualdb.conflict_log`)
		k, _ := strconv.Atoi(n)
		conflicts += k
	}
	lost, kept := 0, 0
	for _, tok := range ledger.tokens {
		if strings.Contains(final[tok.key], tok.token+"|") {
			kept++
			continue
		}
		lost++
		if !strings.Contains(losers.String(), tok.token+"|") {
			t.Errorf("append %s to chain %d is neither in the row nor in any conflict log", tok.token, tok.key)
		}
	}
	t.Logf("%d appends kept, %d lost to logged conflicts; %d conflicts logged in all; counters %v", kept, lost, conflicts, ledger.sums)
	if conflicts == 0 {
		t.Error("no conflict logged: the workload is meant to make them")
	}
	for i := range c.sites {
		if parked, _ := c.queryString(i, `SELECT count(*)::text FROM casualdb.parked`); parked != "0" {
			t.Errorf("site %s: %s changes parked, want 0", c.sites[i].name, parked)
		}
	}
}

// stressClient writes at site i until deadline.
func stressClient(ctx context.Context, c *cluster, i, client int, deadline time.Time, l *stressLedger) error {
	conn, err := pgx.Connect(ctx, c.sites[i].pg.DSN())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rnd := rand.New(rand.NewSource(int64(10*i + client)))
	site := c.sites[i].name
	for seq := 0; time.Now().Before(deadline); seq++ {
		var (
			sql   string
			after func()
		)
		switch r := rnd.Intn(10); {
		case r < 3:
			k := rnd.Intn(12)
			switch rnd.Intn(4) {
			case 0:
				sql = fmt.Sprintf(`DELETE FROM kv WHERE k = %d`, k)
			case 1:
				sql = fmt.Sprintf(`UPDATE kv SET v = '%s%d', n = n + 1 WHERE k = %d`, site, seq, k)
			default:
				sql = fmt.Sprintf(`INSERT INTO kv VALUES (%d, '%s%d') ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = kv.n + 1`, k, site, seq)
			}
		case r < 6:
			k := rnd.Intn(4)
			tok := fmt.Sprintf("%s.%d.%d", site, client, seq)
			sql = fmt.Sprintf(`UPDATE chain SET v = v || ' %s|' WHERE k = %d`, tok, k)
			after = func() { l.tokens = append(l.tokens, chainToken{k, tok}) }
		default:
			k, by := rnd.Intn(5), int64(rnd.Intn(20)-5)
			sql = fmt.Sprintf(`UPDATE counters SET total = total + %d WHERE k = %d`, by, k)
			if rnd.Intn(10) == 0 {
				sql = fmt.Sprintf(`UPDATE counters SET total = total + %d, label = '%s%d' WHERE k = %d`, by, site, seq, k)
			}
			after = func() { l.sums[k] += by }
		}
		_, err := conn.Exec(ctx, sql)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "40P01" {
			continue // deadlock with apply: not committed
		}
		if err != nil {
			return fmt.Errorf("site %s: %s: %w", site, sql, err)
		}
		if after != nil {
			l.mu.Lock()
			after()
			l.mu.Unlock()
		}
	}
	return nil
}
