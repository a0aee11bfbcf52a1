package apply

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
)

// overlay takes into vs the versions capture has not recorded yet, where
// they are newer: the database's stands on a tie (apply decided against the
// pending one and joined the clocks).
func overlay(vs, pending map[meta.RowKey]meta.RowVersion) {
	for k, p := range pending {
		if db, ok := vs[k]; !ok || db.Version.Stamp().Less(p.Version.Stamp()) {
			vs[k] = p
		}
	}
}

// loadVersions returns the current versions of keys: the database's, with
// what capture has not recorded yet over them. It fails with errRace when
// capture is still storing a version of one of them (a local write since
// the last wait for capture).
func (w *txWriter) loadVersions(ctx context.Context, keys []meta.RowKey) (map[meta.RowKey]meta.RowVersion, error) {
	pend, inflight := w.a.cfg.Capture.Pending(keys)
	if inflight {
		return nil, fmt.Errorf("%w: a row was written locally meanwhile", errRace)
	}
	vs, err := meta.LoadVersions(ctx, w.tx, keys)
	if err != nil {
		return nil, err
	}
	overlay(vs, pend)
	return vs, nil
}

// useVersions takes vs, the recorded versions of keys, as what the run
// decides against. A local write that capture may not have versioned yet
// makes a key suspect: the optimistic path validates those before commit,
// the careful one waits for capture now and reads again.
func (w *txWriter) useVersions(ctx context.Context, keys []meta.RowKey, vs map[meta.RowKey]meta.RowVersion, inflight bool) error {
	var suspect []meta.RowKey
	for _, k := range keys {
		st := w.state[k]
		rv, ok := vs[k]
		// A row here whose xmin is not on record, or a row absent here
		// (a local delete, or insert and delete, leave no xmin), may have
		// a local write capture has not versioned yet.
		// And a row capture is still storing a local version of.
		if !st.present || !ok || rv.Xmin != st.xmin || inflight {
			suspect = append(suspect, k)
		}
	}
	switch {
	case len(suspect) == 0:
	case !w.careful:
		for _, k := range suspect {
			w.unverified[k] = true
		}
	default:
		if err := w.waitCapture(ctx); err != nil {
			return err
		}
		var err error
		if vs, err = w.loadVersions(ctx, keys); err != nil {
			return err
		}
	}
	for _, k := range keys {
		if rv, ok := vs[k]; ok {
			w.loaded[k] = rv
			rv := rv
			w.state[k].rv = &rv
		}
	}
	return nil
}

// waitCapture waits until capture has versioned every local transaction that
// committed before now: every such commit record lies below the current WAL
// insert position (whatever the transaction's synchronous_commit).
func (w *txWriter) waitCapture(ctx context.Context) error {
	var lsn string
	if err := w.tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn); err != nil {
		return fmt.Errorf("read wal insert position: %w", err)
	}
	p, err := casualdb.ParseLSN(lsn)
	if err != nil {
		return err
	}
	return w.waitFor(ctx, p)
}

// waitFor waits until capture has versioned every local transaction that
// ends at or before lsn.
func (w *txWriter) waitFor(ctx context.Context, lsn uint64) error {
	wctx, cancel := context.WithTimeout(ctx, w.a.cfg.WaitTimeout)
	defer cancel()
	start := time.Now()
	err := w.a.cfg.Capture.WaitProcessed(wctx, lsn)
	w.waited += time.Since(start)
	return err
}

// validate closes the windows of the race with local writers that the
// optimistic path leaves open: rows decided against versions a local write
// may have superseded before capture saw it, and rows this transaction
// inserted where a local insert and delete may have committed since prepare
// looked (the insert now holds the key). One wait for capture settles both;
// if a recorded version moved, the run starts over (carefully).
func (w *txWriter) validate(ctx context.Context) error {
	keys := make([]meta.RowKey, 0, len(w.inserted)+len(w.unverified))
	for k := range w.inserted {
		keys = append(keys, k)
	}
	for k := range w.unverified {
		if !w.inserted[k] {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	// The writes, and where the WAL ends after them, in one round trip.
	var lsn string
	w.queue = append(w.queue, stmt{sql: `SELECT pg_current_wal_insert_lsn()::text`, rows: -1, into: &lsn, what: "read wal insert position"})
	if err := w.flush(ctx); err != nil {
		return err
	}
	p, err := casualdb.ParseLSN(lsn)
	if err != nil {
		return err
	}
	if err := w.waitFor(ctx, p); err != nil {
		return err
	}
	// The versions now (what capture has not recorded first: see
	// Capture.Pending).
	pend, inflight := w.a.cfg.Capture.Pending(keys)
	if inflight {
		return fmt.Errorf("%w: a row was written locally meanwhile", errRace)
	}
	if w.a.cfg.Capture.TruncationGen() != w.truncGen {
		return fmt.Errorf("%w: a table was truncated locally meanwhile", errRace)
	}
	if len(pend) == 0 {
		// Every local write up to here is recorded in the database: the
		// commit's round trip checks the versions there (unchangedCheck),
		// which saves this one.
		w.check = keys
		return nil
	}
	vs, err := meta.LoadVersions(ctx, w.tx, keys)
	if err != nil {
		return err
	}
	overlay(vs, pend)
	for _, k := range keys {
		now, ok := vs[k]
		before, was := w.expected(k)
		if ok != was || (ok && !sameVersion(now.Version, before.Version)) {
			return fmt.Errorf("%w: %s %s was written locally meanwhile", errRace, k.Table, k.Key)
		}
	}
	return nil
}

// expected returns the version k must have on record for the run to commit:
// the one the run decided against, or the one it recorded itself already
// (a TRUNCATE in the run saves what the run wrote before it).
func (w *txWriter) expected(k meta.RowKey) (meta.RowVersion, bool) {
	if rv, ok := w.all[k]; ok {
		return rv, true
	}
	rv, ok := w.loaded[k]
	return rv, ok
}

// unchangedCheck returns the statement that fails the transaction (SQLSTATE
// 40001, retried) if the recorded version of a key in w.check is not the
// one the run decided against (w.loaded; absent if it had none): what
// validate compares itself when capture still holds versions it has not
// recorded. It must run before the run records its own versions.
func (w *txWriter) unchangedCheck() (stmt, error) {
	n := len(w.check)
	tbls, keys, origins, vcs := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]*string, 0, n)
	walls, logical := make([]int64, 0, n), make([]int64, 0, n)
	for _, k := range w.check {
		tbls, keys = append(tbls, k.Table), append(keys, k.Key)
		rv, ok := w.expected(k)
		if !ok {
			walls, logical, origins, vcs = append(walls, 0), append(logical, 0), append(origins, ""), append(vcs, nil)
			continue
		}
		vc, err := json.Marshal(rv.Version.VC)
		if err != nil {
			return stmt{}, fmt.Errorf("check versions: %s %s: %w", k.Table, k.Key, err)
		}
		v := string(vc)
		walls, logical = append(walls, rv.Version.HLC.Wall), append(logical, int64(rv.Version.HLC.Logical))
		origins, vcs = append(origins, string(rv.Version.Origin)), append(vcs, &v)
	}
	return stmt{sql: meta.UnchangedCheckSQL, args: []any{tbls, keys, walls, logical, origins, vcs}, rows: -1,
		what: "check that the versions the run decided against are unchanged"}, nil
}

func sameVersion(a, b casualdb.Version) bool {
	return a.HLC == b.HLC && a.Origin == b.Origin && conflict.CompareClocks(a.VC, b.VC) == conflict.Equal
}
