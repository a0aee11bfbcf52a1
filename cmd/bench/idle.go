package main

import (
	"context"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/node"
)

// idleResult is what a system costs when nothing is written: the cores each
// replicating process uses, and the WAL each site writes by itself.
type idleResult struct {
	wall       time.Duration
	cpu        cpuUse
	walPerSite []float64 // bytes a second
}

// idleSettle is how long the set-up's own traffic has to settle before the
// idle system is measured: casualdb's default gc.heartbeat, plus a 2 s
// housekeeping tick of rounding and time for the peers to apply and beat in
// turn, so that the heartbeat each site owes after the set-up's writes (its
// own or applied) comes before the window, which then holds what an idle
// cluster costs for good.
const idleSettle = node.DefaultHeartbeat + 5*time.Second

// idle measures the system, set up and converged, for -idle with nothing
// written (no probes, no pgbench).
func (r *runner) idle(ctx context.Context) (*idleResult, error) {
	var sidecars []int
	if r.rep != nil {
		sidecars = r.rep.sidecarPIDs()
	}
	// Let the set-up's own traffic settle first.
	if err := sleep(ctx, idleSettle); err != nil {
		return nil, err
	}
	lsnsBefore, err := r.c.walLSNs(ctx)
	if err != nil {
		return nil, err
	}
	cw, err := startCPU(ctx, r.c, sidecars)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	observed := r.rep.observe(ctx, r.spec.name+"-idle", max(1, int(r.o.idle.Seconds())-1))
	if err := sleep(ctx, r.o.idle); err != nil {
		return nil, err
	}
	observed()
	cpu, err := cw.stop(ctx, r.c)
	if err != nil {
		return nil, err
	}
	wall := time.Since(start)
	lsnsAfter, err := r.c.walLSNs(ctx)
	if err != nil {
		return nil, err
	}
	res := &idleResult{wall: wall, cpu: cpu}
	for i := range lsnsBefore {
		res.walPerSite = append(res.walPerSite, float64(lsnsAfter[i]-lsnsBefore[i])/wall.Seconds())
	}
	return res, nil
}

// walLSNs returns every server's current WAL insert position. Reading it
// writes no WAL.
func (c *cluster) walLSNs(ctx context.Context) ([]uint64, error) {
	var out []uint64
	for i, conn := range c.conns {
		qctx, cancel := context.WithTimeout(ctx, queryTimeout)
		var lsn string
		err := conn.QueryRow(qctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("wal position at site %s: %w", siteName(i), err)
		}
		l, err := casualdb.ParseLSN(lsn)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}
