package main

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// prober inserts one row into bench_probe at site a every interval, on a
// connection of its own, while a scenario runs; every peer's bench_arrival
// then tells when the row arrived there. Probe ids increase across the
// scenarios of one system, so each scenario owns an id range.
type prober struct {
	conn  *pgx.Conn
	every time.Duration
	next  int64 // the next probe's id

	// Set by start, cleared by stop.
	stopc chan struct{}
	done  chan struct{}
	first int64
}

// newProber connects to dsn.
func newProber(ctx context.Context, dsn string, every time.Duration) (*prober, error) {
	cctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect prober: %w", err)
	}
	return &prober{conn: conn, every: every, next: 1}, nil
}

// start begins probing in a goroutine that stop ends. It must not be called
// while probing.
func (p *prober) start() {
	p.stopc, p.done, p.first = make(chan struct{}), make(chan struct{}), p.next
	go every(p.every, p.stopc, p.done, p.probe)
}

// probe inserts the next probe row. Not cancelled by stop: cancelling a
// query closes the connection. A probe that fails is skipped; its id is not
// reused, in case it committed after all.
func (p *prober) probe() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, _ = p.conn.Exec(ctx, `INSERT INTO bench_probe VALUES ($1, clock_timestamp())`, p.next)
	cancel()
	p.next++
}

// every calls f every interval until stop is closed, then closes done: the
// loop of the prober's and the walsender sampler's goroutines.
func every(interval time.Duration, stop <-chan struct{}, done chan<- struct{}, f func()) {
	defer close(done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			f()
		}
	}
}

// stop ends probing, waits for the goroutine, and returns the range of ids
// this run used (last < first when it sent none). Stopping a stopped prober
// returns an empty range.
func (p *prober) stop() (first, last int64) {
	if p.stopc == nil {
		return p.next, p.next - 1
	}
	close(p.stopc)
	<-p.done
	p.stopc, p.done = nil, nil
	return p.first, p.next - 1
}

// close stops probing and closes the connection.
func (p *prober) close() {
	p.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.conn.Close(ctx)
}

// probeLag is one probe: when it was sent at site a, and its lag at each
// peer (in site order b, c, ...; negative when it did not arrive).
type probeLag struct {
	id   int64
	sent time.Time
	lags []time.Duration
}

// lagStats summarises the lags of a run's probes at every peer.
type lagStats struct {
	probes         int // probes sent and found at site a
	samples        int // (probe, peer) pairs that arrived
	missing        int // (probe, peer) pairs that did not
	duplicates     int // arrivals beyond the first (a row inserted twice)
	p50, p99, pmax time.Duration
}

// collectLags reads the probes with ids in [first, last] at every peer.
func (c *cluster) collectLags(ctx context.Context, first, last int64) ([]probeLag, int, error) {
	peers := c.peers()
	byID := map[int64]*probeLag{}
	var out []probeLag
	dups := 0
	for k, i := range peers {
		qctx, cancel := context.WithTimeout(ctx, time.Minute)
		rows, err := c.conns[i].Query(qctx, `SELECT p.id, extract(epoch FROM p.sent)::float8,
			extract(epoch FROM min(r.arrived) - p.sent)::float8, count(r.id)
			FROM bench_probe p LEFT JOIN bench_arrival r USING (id)
			WHERE p.id BETWEEN $1 AND $2 GROUP BY p.id, p.sent ORDER BY p.id`, first, last)
		if err != nil {
			cancel()
			return nil, 0, fmt.Errorf("read probes at site %s: %w", siteName(i), err)
		}
		for rows.Next() {
			var id, n int64
			var sent float64
			var lag *float64
			if err := rows.Scan(&id, &sent, &lag, &n); err != nil {
				rows.Close()
				cancel()
				return nil, 0, fmt.Errorf("read probes at site %s: %w", siteName(i), err)
			}
			pl := byID[id]
			if pl == nil {
				pl = &probeLag{id: id, sent: unixSeconds(sent), lags: make([]time.Duration, len(peers))}
				for j := range pl.lags {
					pl.lags[j] = -1
				}
				byID[id] = pl
			}
			if lag != nil {
				pl.lags[k] = time.Duration(*lag * float64(time.Second))
			}
			dups += int(max(0, n-1))
		}
		rows.Close()
		cancel()
		if err := rows.Err(); err != nil {
			return nil, 0, fmt.Errorf("read probes at site %s: %w", siteName(i), err)
		}
	}
	for _, pl := range byID {
		out = append(out, *pl)
	}
	slices.SortFunc(out, func(a, b probeLag) int { return cmp.Compare(a.id, b.id) })
	return out, dups, nil
}

func unixSeconds(s float64) time.Time {
	sec, frac := math.Modf(s)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// summarise computes the lag percentiles over every (probe, peer) pair.
func summarise(probes []probeLag, duplicates int) lagStats {
	st := lagStats{probes: len(probes), duplicates: duplicates}
	var all []time.Duration
	for _, p := range probes {
		for _, l := range p.lags {
			if l < 0 {
				st.missing++
				continue
			}
			all = append(all, l)
		}
	}
	st.samples = len(all)
	slices.Sort(all)
	st.p50, st.p99, st.pmax = spread(all)
	return st
}

// spread returns the p50, p99 and largest of sorted (zero for none).
func spread(sorted []time.Duration) (p50, p99, pmax time.Duration) {
	if len(sorted) == 0 {
		return 0, 0, 0
	}
	return percentile(sorted, 0.50), percentile(sorted, 0.99), sorted[len(sorted)-1]
}

// percentile returns the nearest-rank p-quantile of sorted (0 < p <= 1):
// the smallest value with at least p of the values at or below it; zero
// for no values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// The epsilon keeps 0.99*100 from rounding up to a rank of 100.
	rank := int(math.Ceil(p*float64(len(sorted))-1e-9)) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// slowestFastest returns the largest and smallest lag of p over the peers
// where it arrived, and false when it arrived nowhere.
func (p probeLag) slowestFastest() (slow, fast time.Duration, ok bool) {
	for _, l := range p.lags {
		if l < 0 {
			continue
		}
		if !ok || l > slow {
			slow = l
		}
		if !ok || l < fast {
			fast = l
		}
		ok = true
	}
	return slow, fast, ok
}
