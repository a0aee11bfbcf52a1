package integration

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// writeEventsUntil inserts events from, from+1, ... at site i, one
// transaction each, a few milliseconds apart, until stop; written counts
// those committed. It writes to PostgreSQL directly, so it goes on while
// the site's sidecar is down.
func writeEventsUntil(ctx context.Context, c *cluster, i, from int, stop <-chan struct{}, written *atomic.Int64) error {
	conn, err := pgx.Connect(ctx, c.sites[i].pg.DSN())
	if err != nil {
		return fmt.Errorf("connect to %s: %w", c.sites[i].name, err)
	}
	defer conn.Close(context.Background())
	for id := from; ; id++ {
		select {
		case <-stop:
			return nil
		case <-time.After(3 * time.Millisecond):
		}
		if _, err := conn.Exec(ctx, `INSERT INTO events VALUES ($1, $2, repeat('x', 100))`, id, c.sites[i].name); err != nil {
			return fmt.Errorf("insert event %d at %s: %w", id, c.sites[i].name, err)
		}
		written.Add(1)
	}
}

// waitMembers waits until every site whose sidecar runs sees every site in
// the state want gives it ("alive", "dead"; sites not in want: alive).
func waitMembers(t *testing.T, c *cluster, timeout time.Duration, want map[int]string) {
	t.Helper()
	var parts []string
	for i, s := range c.sites {
		state := "alive"
		if w, ok := want[i]; ok {
			state = w
		}
		parts = append(parts, s.name+"="+state)
	}
	wantStates := strings.Join(parts, " ")
	pgtest.CheckFor(t, timeout, 100*time.Millisecond, func() error {
		for i, s := range c.sites {
			if s.cmd == nil {
				continue
			}
			if got := memberStates(t, c, i); got != wantStates {
				return fmt.Errorf("site %s sees %q, want %q", s.name, got, wantStates)
			}
		}
		return nil
	})
}

// TestCrash_SidecarKilledRepeatedlyUnderLoad kills a sidecar with SIGKILL
// five times, a different site each time, while every site writes events
// under load, with gossip membership on. Each restart comes once the killed
// site has written more while its sidecar was down (captured only after the
// restart); every second kill also waits until the other sites see it dead,
// so that they keep what they apply meanwhile as hints for it and hand them
// off when it is back, while its peers' shippers send the same transactions
// too. Afterwards every site holds every event exactly once: none lost, none
// applied twice (the audit trigger counts every application), and every
// table has the same checksum at every site.
func TestCrash_SidecarKilledRepeatedlyUnderLoad(t *testing.T) {
	const (
		kills = 5
		// idSpan separates the sites' ids: each writes far fewer.
		idSpan = 1_000_000
		// downWrites is how many events the killed site writes while its
		// sidecar is down; upWrites, how many before each kill.
		downWrites, upWrites = 150, 150
	)
	c := newClusterWith(t, clusterOptions{Sites: 3, Gossip: true, Schema: auditSchema})
	waitMembers(t, c, 30*time.Second, nil)
	defer func() {
		if t.Failed() {
			for i := range c.sites {
				t.Logf("site %s: %s", c.sites[i].name, eventsByOrigin(c, i))
			}
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	written := make([]atomic.Int64, len(c.sites))
	done := make([]chan error, len(c.sites))
	for i := range c.sites {
		done[i] = make(chan error, 1)
		go func() { done[i] <- writeEventsUntil(ctx, c, i, i*idSpan, stop, &written[i]) }()
	}
	stopped := false
	stopWriters := func() {
		if !stopped {
			close(stop)
			stopped = true
		}
	}
	defer stopWriters()
	more := func(i int, n int64) { waitWritten(t, &written[i], done[i], written[i].Load()+n) }

	for k := range kills {
		i := k % len(c.sites)
		name := c.sites[i].name
		more(i, upWrites)
		t.Logf("kill %d: %s before the kill: %s", k+1, name, applyState(t, c, i))
		c.kill(i)
		killed := time.Now()
		if k%2 == 1 {
			waitMembers(t, c, 60*time.Second, map[int]string{i: "dead"})
			pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
				var held float64
				for j := range c.sites {
					if j != i {
						h, _ := peerField(t, c, j, name, "hints_held").(float64)
						held += h
					}
				}
				if held == 0 {
					return fmt.Errorf("no site holds hints for %s, dead", name)
				}
				return nil
			})
		}
		more(i, downWrites)
		c.start(i)
		c.waitHealthy(i)
		waitMembers(t, c, 60*time.Second, nil)
		t.Logf("kill %d: %s's sidecar down %s, back; written so far: a %d, b %d, c %d", k+1, name,
			time.Since(killed).Round(time.Millisecond), written[0].Load(), written[1].Load(), written[2].Load())
		// Before the next kill, every site has everything written until
		// now: the restarted one included, while the load goes on.
		back := time.Now()
		marks := make([]int64, len(c.sites))
		for j := range c.sites {
			marks[j] = written[j].Load()
		}
		waitCaughtUp(t, c, 60*time.Second, marks)
		t.Logf("kill %d: every site caught up %s after %s was back; %s: %s", k+1, time.Since(back).Round(time.Millisecond), name, name, applyState(t, c, i))
	}
	more(0, upWrites)
	stopWriters()
	for i := range c.sites {
		t.Logf("writers stopped: %s: %s", c.sites[i].name, applyState(t, c, i))
	}
	total := 0
	for i := range c.sites {
		if err := <-done[i]; err != nil {
			t.Fatal(err)
		}
		total += int(written[i].Load())
	}
	settle := time.Now()
	checkExactlyOnce(t, c, total)
	c.waitConverged(30*time.Second, "events", "audit")
	t.Logf("%d events, each at every site exactly once, %s after the writers stopped", total, time.Since(settle).Round(time.Millisecond))
}

// eventsByOrigin describes, for a failing test's log, what site i holds of
// each origin's events and what it recorded as applied from each.
func eventsByOrigin(c *cluster, i int) string {
	held, err := c.queryString(i, `SELECT string_agg(origin || ': ' || n || ' events, ids ' || lo || '..' || hi, '; ' ORDER BY origin)
		FROM (SELECT origin, count(*) n, min(id) lo, max(id) hi FROM events GROUP BY origin) e`)
	if err != nil {
		held = err.Error()
	}
	progress, err := c.queryString(i, `SELECT string_agg(origin || ' seq ' || seq || ' lsn ' || lsn, '; ' ORDER BY origin) FROM casualdb.progress`)
	if err != nil {
		progress = err.Error()
	}
	return held + "; applied: " + progress
}

// applyState describes, for the test's log, what site i has applied from
// each origin and what its apply reports.
func applyState(t *testing.T, c *cluster, i int) string {
	t.Helper()
	progress, err := c.queryString(i, `SELECT string_agg(origin || '=' || seq, ' ' ORDER BY origin) FROM casualdb.progress`)
	if err != nil {
		progress = err.Error()
	}
	ap, _ := status(t, c, i)["apply"].(map[string]any)
	return fmt.Sprintf("applied seqs %s; inbox %v, duplicates skipped %v, dependency waits %v, resends %v",
		progress, ap["inbox_messages"], ap["skipped_duplicates"], ap["dependency_waits"], ap["resend_requests"])
}

// waitCaughtUp waits until every site holds at least marks[j] events of
// every origin j: what j's writer had committed when it was called.
func waitCaughtUp(t *testing.T, c *cluster, timeout time.Duration, marks []int64) {
	t.Helper()
	pgtest.CheckFor(t, timeout, 100*time.Millisecond, func() error {
		for i := range c.sites {
			for j, o := range c.sites {
				got, err := c.queryString(i, `SELECT count(*)::text FROM events WHERE origin = $1`, o.name)
				if err != nil {
					return fmt.Errorf("count %s's events at %s: %w", o.name, c.sites[i].name, err)
				}
				var n int64
				if _, err := fmt.Sscan(got, &n); err != nil {
					return fmt.Errorf("count %s's events at %s: %w", o.name, c.sites[i].name, err)
				}
				if n < marks[j] {
					return fmt.Errorf("site %s holds %d of the first %d events of %s (%s)", c.sites[i].name, n, marks[j], o.name, applyState(t, c, i))
				}
			}
		}
		return nil
	})
}
