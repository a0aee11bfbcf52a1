package capture

import (
	"context"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// What apply asks of capture: the versions capture holds and has not
// recorded yet (Pending, FlushVersions), waiting until capture has
// processed a position (WaitProcessed), and the bracketing of apply's
// commits (BeginApply, EndApply), which capture meets again in the WAL.

// applyTx is one apply transaction as capture knows it: what it wrote, and
// whether its commit has returned.
type applyTx struct {
	w     meta.Written
	ended chan struct{} // closed by EndApply
	ok    bool          // committed (set before ended is closed)
}

// Pending returns the versions of keys that capture has versioned and
// stored in the outbox but not yet recorded in casualdb.row_version; a
// version it holds is newer than what the database holds for the key,
// unless apply wrote the key since (then the database's stamp is the same
// or greater: take the greater, the database's on a tie). inflight is true
// when a key has a version capture is still storing in the outbox: wait for
// the processed position to pass it (WaitProcessed) and ask again.
//
// Call it before reading the database's versions: a version recorded in
// between is then found in the database.
func (c *Capturer) Pending(keys []meta.RowKey) (vs map[meta.RowKey]meta.RowVersion, inflight bool) {
	c.mu.Lock()
	appended := c.appended
	c.mu.Unlock()
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if c.cache == nil || len(c.cache.pending) == 0 {
		return nil, false
	}
	for _, k := range keys {
		p, ok := c.cache.pending[k]
		switch {
		case !ok:
		case p.gen > appended:
			inflight = true
		default:
			if vs == nil {
				vs = map[meta.RowKey]meta.RowVersion{}
			}
			vs[k] = p.rv
		}
	}
	return vs, inflight
}

// FlushVersions records every version capture has stored in the outbox
// (and that apply may have read from Pending) in the database, and returns
// once they are there. Apply calls it before it truncates a table.
func (c *Capturer) FlushVersions(ctx context.Context) error {
	c.mu.Lock()
	gen := c.appended
	c.mu.Unlock()
	return c.recordThrough(ctx, gen)
}

// WaitProcessed returns once every local transaction that ends at or before
// lsn has been versioned and recorded. Apply calls it before deciding against
// the recorded version of a row that a local write may have changed.
//
// lsn may lie inside WAL that the caller's own open transaction wrote and
// that is not flushed yet; logical decoding reads only flushed WAL, so after
// a wait capture flushes it at once (nudge) rather than wait for the WAL
// writer, which can take seconds when the server is otherwise idle.
func (c *Capturer) WaitProcessed(ctx context.Context, lsn uint64) error {
	start := time.Now()
	var nudged time.Time
	nudges, wakes := 0, 0
	from := c.processed.Load()
	for {
		c.mu.Lock()
		if c.processed.Load() >= lsn {
			c.mu.Unlock()
			if d := time.Since(start); d > 50*time.Millisecond {
				c.log.Debug("slow wait for capture", "took", d, "nudges", nudges, "wakes", wakes, "from", casualdb.FormatLSN(from), "to", casualdb.FormatLSN(lsn))
			}
			return nil
		}
		wakes++
		ch := c.advanced
		rd := c.rd
		c.mu.Unlock()
		if rd != nil {
			rd.wake()
		}
		if time.Since(nudged) > 20*time.Millisecond {
			nudged = time.Now()
			nudges++
			if err := c.nudge(ctx); err != nil {
				c.log.Debug("nudge wal flush", "err", err)
			}
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("wait for capture to reach %s (at %s): %w", casualdb.FormatLSN(lsn), casualdb.FormatLSN(c.processed.Load()), ctx.Err())
		}
	}
}

// nudge commits a transaction that writes one WAL record (a transactional
// logical message, which pgoutput does not forward): with synchronous_commit
// on its commit flushes the WAL up to its own commit record, so everything
// before it, including the records of transactions still open, becomes
// decodable. (A transaction that only takes an xid writes no WAL before its
// commit record, and PostgreSQL commits it without a flush.)
func (c *Capturer) nudge(ctx context.Context) error {
	c.nudgeMu.Lock()
	defer c.nudgeMu.Unlock()
	if c.nudgeConn == nil || c.nudgeConn.IsClosed() {
		cfg, err := pgx.ParseConfig(c.cfg.DSN)
		if err != nil {
			return fmt.Errorf("nudge: %w", err)
		}
		cfg.RuntimeParams["synchronous_commit"] = "on"
		cfg.RuntimeParams["application_name"] = "casualdb-capture-nudge"
		if c.nudgeConn, err = pgx.ConnectConfig(ctx, cfg); err != nil {
			return fmt.Errorf("nudge: connect: %w", err)
		}
	}
	nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.nudgeConn.Exec(nctx, `SELECT pg_logical_emit_message(true, 'casualdb', '')`); err != nil {
		c.nudgeConn.Close(context.Background())
		c.nudgeConn = nil
		return fmt.Errorf("nudge: %w", err)
	}
	return nil
}

// BeginApply tells capture that apply is about to commit transaction xid,
// which recorded w. Capture, meeting that transaction in the WAL, waits for
// EndApply before it reads versions (so that it never versions a later local
// write against metadata the apply transaction has not made visible yet),
// and takes w into its version cache.
func (c *Capturer) BeginApply(xid uint32, w meta.Written) {
	c.mu.Lock()
	c.inflight[xid] = &applyTx{w: w, ended: make(chan struct{})}
	c.mu.Unlock()
}

// EndApply tells capture that the commit of xid has returned: committed
// (ok) or not. A transaction that did not commit never appears in the WAL;
// one whose outcome apply could not learn (ok false, committed all the
// same) is met unknown, and capture then forgets its cached versions.
func (c *Capturer) EndApply(xid uint32, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, found := c.inflight[xid]
	if !found {
		return
	}
	if ok {
		a.ok = true
	} else {
		delete(c.inflight, xid)
	}
	close(a.ended)
	if len(c.inflight) > maxApplyTracked {
		// Capture restarted past transactions it will never meet again;
		// forgetting one costs a cleared cache at worst.
		for x, t := range c.inflight {
			if t.ok && x != xid {
				delete(c.inflight, x)
				break
			}
		}
	}
}

// maxApplyTracked bounds the apply transactions capture remembers.
const maxApplyTracked = 4096

// appliedWrites waits until the commit of apply transaction xid has
// returned and returns what it wrote; known is false when apply did not
// tell (or its commit's outcome was unknown to it).
func (c *Capturer) appliedWrites(ctx context.Context, xid uint32) (w meta.Written, known bool, err error) {
	c.mu.Lock()
	a, ok := c.inflight[xid]
	c.mu.Unlock()
	if !ok {
		return w, false, nil
	}
	select {
	case <-a.ended:
	case <-ctx.Done():
		return w, false, ctx.Err()
	}
	c.mu.Lock()
	delete(c.inflight, xid)
	c.mu.Unlock()
	return a.w, a.ok, nil
}
