package main

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// walSampler watches, while a scenario's load runs, how far site a's
// walsenders have decoded (pg_stat_replication.sent_lsn, the end of the last
// WAL record a logical walsender decoded) against the WAL flushed, on a
// connection of its own. Both systems' capture starts there: CasualDB's
// sidecar reads one slot, pglogical has a walsender per subscriber. What
// the walsenders are behind is the part of the lag that PostgreSQL's
// decoding makes, before any replicator's own code.
type walSampler struct {
	dsn   string
	every time.Duration // 0: the sampler does not sample
	conn  *pgx.Conn     // nil after a failed sample, until the next one reconnects

	// Set by start, cleared by stop.
	stopc chan struct{}
	done  chan struct{}

	// Written by the sampling goroutine, read after it ended.
	samples []walSample
	failed  int   // samples that failed
	lastErr error // the last failure
}

// walSample is one look at site a: when, the WAL flushed, and each
// streaming walsender's decoded position and what it was doing
// (pg_stat_activity's wait event, "running" when none: on a CPU or waiting
// for one).
type walSample struct {
	at      time.Time
	flushed uint64
	sent    []uint64
	events  []string
}

// newWALSampler connects to dsn.
func newWALSampler(ctx context.Context, dsn string, every time.Duration) (*walSampler, error) {
	w := &walSampler{dsn: dsn, every: every}
	if err := w.connect(ctx); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *walSampler) connect(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, w.dsn)
	if err != nil {
		return fmt.Errorf("connect wal sampler: %w", err)
	}
	w.conn = conn
	return nil
}

// start begins sampling in a goroutine that stop ends (a sample after ctx
// is done fails at once); it drops
// the samples of an earlier run. It must not be called while sampling.
func (w *walSampler) start(ctx context.Context) {
	w.samples, w.failed, w.lastErr = nil, 0, nil
	if w.every <= 0 {
		return
	}
	w.stopc, w.done = make(chan struct{}), make(chan struct{})
	go every(w.every, w.stopc, w.done, func() { w.sampleOnce(ctx) })
}

// sampleOnce takes a sample, or counts its failure (reported with the
// figures; the next sample reconnects: a query that timed out closed the
// connection).
func (w *walSampler) sampleOnce(ctx context.Context) {
	s, err := w.sample(ctx)
	if err != nil {
		w.failed++
		w.lastErr = err
		return
	}
	w.samples = append(w.samples, s)
}

// sample reads the flushed position first and the walsenders' positions
// after it, in one round trip: a walsender that has decoded everything is
// never counted behind for WAL flushed between the two reads.
func (w *walSampler) sample(ctx context.Context) (walSample, error) {
	var s walSample
	if w.conn == nil {
		if err := w.connect(ctx); err != nil {
			return s, err
		}
	}
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	var b pgx.Batch
	b.Queue(`SELECT clock_timestamp(), (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint`)
	b.Queue(`SELECT coalesce(array_agg((r.sent_lsn - '0/0'::pg_lsn)::bigint ORDER BY r.pid), '{}'),
			coalesce(array_agg(coalesce(a.wait_event_type || ':' || a.wait_event, 'running') ORDER BY r.pid), '{}')
		FROM pg_stat_replication r JOIN pg_stat_activity a USING (pid)
		WHERE r.state = 'streaming' AND r.sent_lsn IS NOT NULL`)
	res := w.conn.SendBatch(qctx, &b)
	var sent []int64
	err := res.QueryRow().Scan(&s.at, &s.flushed)
	if err == nil {
		err = res.QueryRow().Scan(&sent, &s.events)
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = w.conn.Close(cctx)
		ccancel()
		w.conn = nil
		return s, fmt.Errorf("sample walsenders: %w", err)
	}
	for _, v := range sent {
		s.sent = append(s.sent, uint64(v))
	}
	return s, nil
}

// stop ends sampling and returns what the samples showed.
func (w *walSampler) stop() walStats {
	if w.stopc == nil {
		return walStats{}
	}
	close(w.stopc)
	<-w.done
	w.stopc, w.done = nil, nil
	ds, unknown := decodingDelays(w.samples)
	st := summariseWAL(ds)
	st.unknown, st.failed, st.lastErr = unknown, w.failed, w.lastErr
	st.events = countEvents(w.samples)
	return st
}

// close stops sampling and closes the connection.
func (w *walSampler) close() {
	w.stop()
	if w.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = w.conn.Close(ctx)
}

// decodingDelays returns, for every sample and walsender, the age of the
// oldest WAL the walsender had not decoded yet: zero when it had decoded
// everything flushed; else the time since the last earlier sample whose
// flushed position was at or below the walsender's (the WAL after its
// position was flushed after that sample): an upper bound, within one
// sampling interval of the truth while samples come on time. A walsender
// behind every earlier sample has an unknown delay: left out, and counted
// in unknown. Flushed positions never decrease.
func decodingDelays(ss []walSample) (ds []time.Duration, unknown int) {
	for i, s := range ss {
		for _, sent := range s.sent {
			if sent >= s.flushed {
				ds = append(ds, 0)
				continue
			}
			j := sort.Search(i, func(j int) bool { return ss[j].flushed > sent }) - 1
			if j < 0 {
				unknown++
				continue
			}
			ds = append(ds, s.at.Sub(ss[j].at))
		}
	}
	return ds, unknown
}

// walStats summarises decodingDelays and the walsenders' wait events.
type walStats struct {
	samples        int // (sample, walsender) pairs with a known delay
	p50, p99, pmax time.Duration
	unknown        int            // pairs left out: behind every earlier sample
	failed         int            // samples that failed
	lastErr        error          // the last failure
	events         map[string]int // wait event (or "running") -> walsender samples
}

// countEvents counts the walsenders' states over ss.
func countEvents(ss []walSample) map[string]int {
	out := map[string]int{}
	for _, s := range ss {
		for _, e := range s.events {
			out[e]++
		}
	}
	return out
}

// eventShares formats events as shares of the samples, largest first, the
// rest (under 2 % each) summed as "other".
func eventShares(events map[string]int) string {
	total := 0
	for _, n := range events {
		total += n
	}
	if total == 0 {
		return none
	}
	names := make([]string, 0, len(events))
	for e := range events {
		names = append(names, e)
	}
	slices.SortFunc(names, func(a, b string) int {
		if c := events[b] - events[a]; c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	var parts []string
	other := 0
	for _, e := range names {
		if pct := 100 * events[e] / total; pct >= 2 {
			parts = append(parts, fmt.Sprintf("%s %d %%", e, pct))
		} else {
			other += events[e]
		}
	}
	if other > 0 {
		parts = append(parts, fmt.Sprintf("other %d %%", 100*other/total))
	}
	return strings.Join(parts, ", ") + fmt.Sprintf(" (%d samples)", total)
}

func summariseWAL(ds []time.Duration) walStats {
	if len(ds) == 0 {
		return walStats{}
	}
	slices.Sort(ds)
	st := walStats{samples: len(ds)}
	st.p50, st.p99, st.pmax = spread(ds)
	return st
}
