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

// walEvery is how often the walSampler looks at site a's walsenders.
const walEvery = 20 * time.Millisecond

// walSampler watches, while a scenario's load runs, how far site a's
// walsenders have decoded (pg_stat_replication.sent_lsn, the end of the last
// WAL record a logical walsender decoded) against the WAL flushed, on a
// connection of its own. Both systems' capture starts there: CasualDB's
// sidecar reads one slot, pglogical has a walsender per subscriber. What
// the walsenders are behind is the part of the lag that PostgreSQL's
// decoding makes, before any replicator's own code.
type walSampler struct {
	conn    *pgx.Conn
	stopc   chan struct{}
	done    chan struct{}
	samples []walSample
	err     error // the first failed sample
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
func newWALSampler(ctx context.Context, dsn string) (*walSampler, error) {
	cctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	conn, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect wal sampler: %w", err)
	}
	return &walSampler{conn: conn}, nil
}

// start begins sampling in a goroutine that stop ends; it drops the samples
// of an earlier run.
func (w *walSampler) start() {
	w.stopc, w.done, w.samples, w.err = make(chan struct{}), make(chan struct{}), nil, nil
	go w.loop(w.stopc, w.done)
}

func (w *walSampler) loop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(walEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var s walSample
			var sent []int64
			err := w.conn.QueryRow(ctx, `SELECT clock_timestamp(), (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint,
				coalesce(array_agg(w.sent ORDER BY w.pid) FILTER (WHERE w.pid IS NOT NULL), '{}'),
				coalesce(array_agg(w.ev ORDER BY w.pid) FILTER (WHERE w.pid IS NOT NULL), '{}')
				FROM (SELECT 1) one LEFT JOIN (
					SELECT r.pid, (r.sent_lsn - '0/0'::pg_lsn)::bigint AS sent,
						coalesce(a.wait_event_type || ':' || a.wait_event, 'running') AS ev
					FROM pg_stat_replication r JOIN pg_stat_activity a USING (pid)
					WHERE r.state = 'streaming' AND r.sent_lsn IS NOT NULL) w ON true`).Scan(&s.at, &s.flushed, &sent, &s.events)
			cancel()
			if err != nil {
				if w.err == nil {
					w.err = fmt.Errorf("sample walsenders: %w", err)
				}
				continue
			}
			for _, v := range sent {
				s.sent = append(s.sent, uint64(v))
			}
			w.samples = append(w.samples, s)
		}
	}
}

// stop ends sampling and returns the undecoded WAL's age over the run.
func (w *walSampler) stop() (walStats, error) {
	if w.stopc == nil {
		return walStats{}, nil
	}
	close(w.stopc)
	<-w.done
	w.stopc, w.done = nil, nil
	if w.err != nil {
		return walStats{}, w.err
	}
	st := summariseWAL(decodingDelays(w.samples))
	st.events = countEvents(w.samples)
	return st, nil
}

// close stops sampling and closes the connection.
func (w *walSampler) close() {
	_, _ = w.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = w.conn.Close(ctx)
}

// decodingDelays returns, for every sample and walsender, the age of the
// oldest WAL the walsender had not decoded yet: zero when it had decoded
// everything flushed; else the time since the last earlier sample whose
// flushed position was at or below the walsender's (the WAL after its
// position was flushed after that sample): an upper bound, within one
// sampling interval of the truth. A walsender behind every earlier sample
// is left out (its delay is unknown). Flushed positions never decrease.
func decodingDelays(ss []walSample) []time.Duration {
	var out []time.Duration
	for i, s := range ss {
		for _, sent := range s.sent {
			if sent >= s.flushed {
				out = append(out, 0)
				continue
			}
			j := sort.Search(i, func(j int) bool { return ss[j].flushed > sent }) - 1
			if j < 0 {
				continue
			}
			out = append(out, s.at.Sub(ss[j].at))
		}
	}
	return out
}

// walStats summarises decodingDelays and the walsenders' wait events.
type walStats struct {
	samples        int
	p50, p99, pmax time.Duration
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
	return walStats{samples: len(ds), p50: percentile(ds, 0.50), p99: percentile(ds, 0.99), pmax: ds[len(ds)-1]}
}
