package apply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// carefulRun bounds the transactions of a careful retry: one statement and
// a savepoint per change, every row of the run locked meanwhile. The rest of
// a longer run goes back to be applied after it.
const carefulRun = 256

// applyRun applies consecutive transactions of one origin in one local
// transaction, retrying what a race with local writers makes fail; a retry
// applies at most carefulRun of them. It returns how many it applied (a
// prefix of run); 0 when none could be applied now (the caller keeps them
// for later).
func (a *Applier) applyRun(ctx context.Context, run []inMsg) (applied int, err error) {
	origin := run[0].origin
	var lastErr error
	for attempt := 0; attempt < 8; attempt++ {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if attempt > 0 && len(run) > carefulRun {
			run = run[:carefulRun]
		}
		conn, err := a.originConn(ctx, origin)
		if err != nil {
			lastErr = err
			break
		}
		res, err := a.applyTxs(ctx, conn, run, attempt > 0)
		if err == nil {
			for tbl := range res.raised {
				a.vcache.dropTable(tbl)
			}
			for k, rv := range res.recorded {
				a.vcache.put(k, rv)
			}
			last := run[len(run)-1]
			now := time.Now()
			if a.cfg.ObserveDelay != nil {
				for _, im := range run {
					a.cfg.ObserveDelay(origin, "received", im.received.Sub(im.tx.CommitTime))
					a.cfg.ObserveDelay(origin, "applied", now.Sub(im.tx.CommitTime))
				}
			}
			var informing uint64
			for _, im := range run {
				informing += meta.Informing(im.tx)
			}
			a.count(func(s *Stats) {
				s.Applied += uint64(len(run))
				s.Informing += informing
				s.Changes += res.changes
				s.Conflicts += res.conflicts
				s.Parked += res.parked
				o := s.Origins[origin]
				o.Applied += uint64(len(run))
				o.Seq, o.Epoch = last.seq, last.epoch
				o.LastCommit = last.tx.CommitTime
				o.LastApplied = now
				s.Origins[origin] = o
			})
			return len(run), nil
		}
		lastErr = err
		if conn.IsClosed() || !isRetryable(err) {
			a.dropConn(origin)
		}
		a.log.Debug("apply attempt failed; retrying", "origin", origin, "attempt", attempt, "err", err)
		select {
		case <-time.After(time.Duration(attempt*attempt) * 10 * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	// The caller keeps the run and tries again; forget the optimistic
	// progress.
	a.truncsValid = false
	if err := a.reloadProgress(ctx); err != nil {
		return 0, err
	}
	a.log.Error("apply failed; will retry", "origin", origin, "txs", len(run), "err", lastErr)
	return 0, nil
}

func (a *Applier) reloadProgress(ctx context.Context) error {
	p, err := meta.LoadProgress(ctx, a.main)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	a.progress = p
	return nil
}

func (a *Applier) originConn(ctx context.Context, origin casualdb.SiteID) (*pgx.Conn, error) {
	if c, ok := a.conns[origin]; ok && !c.IsClosed() {
		return c, nil
	}
	c, err := connectOrigin(ctx, a.cfg.DSN, origin)
	if err != nil {
		return nil, err
	}
	a.conns[origin] = c
	return c, nil
}

func (a *Applier) dropConn(origin casualdb.SiteID) {
	if c, ok := a.conns[origin]; ok {
		c.Close(context.Background())
		delete(a.conns, origin)
	}
}

// errRace is returned when a local write raced with the apply transaction
// in a way only a retry resolves.
var errRace = errors.New("local write raced with apply")
