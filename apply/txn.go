package apply

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// rowState is what one apply transaction knows of one row.
type rowState struct {
	key     []string // the key's values, as in the change
	present bool
	xmin    uint32
	rv      *meta.RowVersion // recorded version; nil when none
}

type runResult struct {
	changes, conflicts, parked uint64
	// What the committed run recorded (for apply's version cache).
	recorded map[meta.RowKey]meta.RowVersion
	raised   map[string]casualdb.Version
}

// applyTxs applies run in one local transaction. careful wraps every row
// write in a savepoint, so that a change the database refuses is parked
// rather than failing the rest (the first attempt is optimistic).
//
// Round trips are what a busy machine makes expensive, so the optimistic
// path sends the transaction in as few batches as it can: BEGIN with the row
// locks and recorded versions; then the row writes with the metadata and
// COMMIT, unless a validation wait for capture must come between them.
func (a *Applier) applyTxs(ctx context.Context, conn *pgx.Conn, run []inMsg, careful bool) (res runResult, err error) {
	start := time.Now()
	w := &txWriter{a: a, tx: conn, careful: careful, state: map[meta.RowKey]*rowState{}, tables: map[string]*localTable{}}
	defer func() {
		if err != nil && conn.PgConn().TxStatus() != 'I' && !conn.IsClosed() {
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, rerr := conn.Exec(rctx, "ROLLBACK"); rerr != nil {
				// The connection's state is unknown: drop it.
				_ = conn.Close(rctx)
			}
		}
	}()
	if err := w.prepare(ctx, run); err != nil {
		return res, err
	}
	prepared := time.Now()
	for _, im := range run {
		for i := range im.tx.Changes {
			if err := w.change(ctx, im, &im.tx.Changes[i]); err != nil {
				return res, err
			}
		}
	}
	decided := time.Now()
	if err := w.validate(ctx); err != nil {
		return res, err
	}
	validated := time.Now()
	if len(w.check) > 0 {
		check, err := w.unchangedCheck()
		if err != nil {
			return res, err
		}
		w.queue = append(w.queue, check)
	}
	q := execQueue{w}
	if err := w.saveWritten(ctx, q); err != nil {
		return res, err
	}
	last := run[len(run)-1]
	if err := meta.SaveProgress(ctx, q, last.origin, meta.Progress{Seq: last.seq, LSN: last.tx.LSN, CommitTime: last.tx.CommitTime, Epoch: last.epoch, Deps: last.tx.Deps}); err != nil {
		return res, err
	}
	w.queue = append(w.queue, w.absentChecks()...)
	w.queue = append(w.queue,
		stmt{sql: `SELECT pg_replication_origin_xact_setup($1::pg_lsn, $2)`, args: []any{casualdb.FormatLSN(last.tx.LSN), last.tx.CommitTime}, rows: -1, what: "set up replication origin progress"},
		stmt{sql: "COMMIT", rows: -1, what: "commit"})
	a.cfg.Capture.BeginApply(w.xid, meta.Written{Versions: w.all, Truncations: w.raised})
	err = w.flush(ctx)
	a.cfg.Capture.EndApply(w.xid, err == nil)
	if err != nil {
		return res, fmt.Errorf("commit: %w", err)
	}
	w.res.recorded, w.res.raised = w.all, w.raised
	a.log.Debug("applied run", "origin", last.origin, "txs", len(run), "changes", w.res.changes, "waited", w.waited, "took", time.Since(start),
		"prepare", prepared.Sub(start), "decide", decided.Sub(prepared), "validate", validated.Sub(decided), "commit", time.Since(validated))
	return w.res, nil
}

// saveWritten records the versions written since the last save (queued
// into q, or run on it) and keeps them for capture (see Capture.BeginApply).
func (w *txWriter) saveWritten(ctx context.Context, q meta.Execer) error {
	if err := meta.SaveVersions(ctx, q, w.written); err != nil {
		return err
	}
	for k, rv := range w.written {
		w.all[k] = rv
	}
	w.written = map[meta.RowKey]meta.RowVersion{}
	return nil
}

// absentChecks returns, per table, a statement that fails the transaction
// (SQLSTATE 40001, retried) if a row the run leaves absent exists now. Such a
// row is not locked by the run (an absent row cannot be), so a local insert
// may commit after the run's validation; the run would then record a version
// decided without it. Checked last before COMMIT, in the same round trip,
// the window shrinks from the validation's round trips and wait to the
// time between two statements (it does not close: see docs/architecture.md).
func (w *txWriter) absentChecks() []stmt {
	keys := map[string][][]string{}
	for k, st := range w.state {
		if st.present {
			continue
		}
		keys[k.Table] = append(keys[k.Table], st.key)
	}
	tbls := make([]string, 0, len(keys))
	for tbl := range keys {
		tbls = append(tbls, tbl)
	}
	sort.Strings(tbls)
	var out []stmt
	for _, tbl := range tbls {
		lt := w.tables[tbl]
		if lt == nil {
			continue
		}
		q, args := presentQuery(lt, keys[tbl])
		out = append(out, stmt{sql: `SELECT casualdb.expect_unraced(count(*), 'apply left absent') FROM (` + q + `) p`, args: args, rows: -1,
			what: "check that rows left absent are still absent in " + lt.name})
	}
	return out
}

// execQueue queues the statements of meta's Save functions for the next
// flush.
type execQueue struct{ w *txWriter }

func (e execQueue) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	e.w.queue = append(e.w.queue, stmt{sql: sql, args: args, rows: -1, what: "record metadata"})
	return pgconn.CommandTag{}, nil
}

// stmt is a statement queued for the next flush.
type stmt struct {
	sql  string
	args []any
	rows int64   // rows it must affect; -1: any number
	into *string // when set, the statement returns one text value, stored here
	what string  // for errors
}

// dbConn is the connection an apply transaction runs on (a *pgx.Conn inside
// a transaction block that the transaction's first batch opened).
type dbConn interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

var _ dbConn = (*pgx.Conn)(nil)

// relOf is a transaction's description of a table.
type relOf struct {
	tx    *casualdb.Tx
	table string
}

// txWriter carries the state of one apply transaction.
type txWriter struct {
	a       *Applier
	tx      dbConn
	xid     uint32 // the transaction's id: the xmin of every row it writes outside savepoints
	careful bool
	state   map[meta.RowKey]*rowState
	tables  map[string]*localTable
	// bad holds, for each transaction's description of each table it
	// writes, why its changes of that table are parked (the table is not
	// replicated here, or the description does not fit it); nil: they are
	// applied. Every description is checked, not only the run's first: the
	// rows are written at the positions their description gives.
	bad      map[relOf]error
	truncs   map[string]casualdb.Version     // the table's markers, the run's own included
	truncGen uint64                          // capture's truncation generation when truncs was read
	written  map[meta.RowKey]meta.RowVersion // not saved yet
	all      map[meta.RowKey]meta.RowVersion // every version the transaction records
	raised   map[string]casualdb.Version     // the truncation markers it raises
	// loaded holds the versions on record when the transaction decided.
	loaded map[meta.RowKey]meta.RowVersion
	// inserted holds the rows this transaction inserted where none was.
	inserted map[meta.RowKey]bool
	// unverified holds the rows decided against versions that a local write
	// not yet captured may have superseded.
	unverified map[meta.RowKey]bool
	// check holds the keys whose versions the commit checks (validate).
	check  []meta.RowKey
	res    runResult
	waited time.Duration // time spent waiting for capture

	// In the optimistic (not careful) mode, row writes are gathered (plan,
	// see bulk.go) or queued, and sent in one round trip at the next
	// flush; the rows they write carry xid as their xmin.
	plan  plan
	queue []stmt
}

// resolve finds the local table rel describes (w.tables), and returns why
// changes under rel are parked: the table is not replicated here, or rel
// does not fit it (casualdb.ErrSchemaMismatch); nil when they are applied.
// Any other error fails the run.
func (w *txWriter) resolve(ctx context.Context, rel casualdb.Relation) (bad, err error) {
	if lt, ok := w.tables[rel.Table]; ok && lt.check(rel) == nil {
		return nil, nil
	}
	lt, err := w.a.table(ctx, rel)
	switch {
	case errors.Is(err, casualdb.ErrSchemaMismatch):
		return err, nil
	case err != nil:
		return nil, err
	}
	w.tables[rel.Table] = lt
	return nil, nil
}

// prepare opens the transaction, resolves the tables, locks every row the
// run touches, and reads their recorded versions, in one round trip.
func (w *txWriter) prepare(ctx context.Context, run []inMsg) error {
	w.bad = map[relOf]error{}
	w.written = map[meta.RowKey]meta.RowVersion{}
	w.all = map[meta.RowKey]meta.RowVersion{}
	w.raised = map[string]casualdb.Version{}
	w.inserted = map[meta.RowKey]bool{}
	w.unverified = map[meta.RowKey]bool{}
	w.check = nil
	w.loaded = map[meta.RowKey]meta.RowVersion{}
	keys := map[string][][]string{}
	var all []meta.RowKey
	for _, im := range run {
		for _, c := range im.tx.Changes {
			ro := relOf{im.tx, c.Table}
			if _, ok := w.bad[ro]; !ok {
				bad, err := w.resolve(ctx, im.tx.Relations[c.Table])
				if err != nil {
					return err
				}
				w.bad[ro] = bad
			}
			if c.Op == casualdb.OpTruncate || w.bad[ro] != nil {
				continue
			}
			rk := meta.RowKey{Table: c.Table, Key: casualdb.KeyString(c.Key)}
			if _, ok := w.state[rk]; ok {
				continue
			}
			w.state[rk] = &rowState{key: c.Key}
			all = append(all, rk)
			keys[c.Table] = append(keys[c.Table], c.Key)
		}
	}
	tbls := make([]string, 0, len(keys))
	for tbl := range keys {
		tbls = append(tbls, tbl)
	}
	sort.Strings(tbls) // one lock order for every run

	// The versions apply recorded itself need not be read, if the rows are
	// as it left them (checked below, against the xmins the locks return).
	cached := map[meta.RowKey]meta.RowVersion{}
	need := all
	if !w.careful {
		need = nil
		for _, k := range all {
			if rv, ok := w.a.vcache.get(k); ok {
				cached[k] = rv
			} else {
				need = append(need, k)
			}
		}
	}

	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SELECT pg_current_xact_id()::text")
	for _, tbl := range tbls {
		sql, args := lockQuery(w.tables[tbl], keys[tbl])
		b.Queue(sql, args...)
	}
	var needTables []string
	if len(need) > 0 {
		sql, args := meta.VersionsQuery(need)
		b.Queue(sql, args...)
		// After the versions: a row found without one whose tombstone was
		// collected before they were read has its table's floor raised
		// by then (the collection raises it in the same statement).
		for _, k := range need {
			if !slices.Contains(needTables, k.Table) {
				needTables = append(needTables, k.Table)
			}
		}
		b.Queue(meta.FloorsQuery, needTables)
	}
	// Truncation markers change rarely: read them only when capture
	// recorded a local truncation, or apply applied one, since.
	tgen := w.a.cfg.Capture.TruncationGen()
	loadTruncs := !w.a.truncsValid || tgen != w.a.truncGen
	if loadTruncs {
		b.Queue(meta.TruncationsQuery)
	}
	w.truncGen = tgen
	// Before the database is read: a version recorded meanwhile is found
	// there.
	pend, inflight := w.a.cfg.Capture.Pending(all)
	br := w.tx.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	var xid8 string
	if err := br.QueryRow().Scan(&xid8); err != nil {
		return fmt.Errorf("assign transaction id: %w", err)
	}
	x, _ := strconv.ParseUint(xid8, 10, 64)
	w.xid = uint32(x)
	for _, tbl := range tbls {
		lt := w.tables[tbl]
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("lock rows of %s: %w", lt.name, err)
		}
		present, err := scanLocked(lt, rows)
		if err != nil {
			return err
		}
		for key, xmin := range present {
			if st := w.state[meta.RowKey{Table: tbl, Key: key}]; st != nil {
				st.present, st.xmin = true, xmin
			}
		}
	}
	vs := map[meta.RowKey]meta.RowVersion{}
	if len(need) > 0 {
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("load row versions: %w", err)
		}
		if vs, err = meta.ScanVersions(rows, len(need)); err != nil {
			return err
		}
		if rows, err = br.Query(); err != nil {
			return fmt.Errorf("load collected floors: %w", err)
		}
		floors, err := meta.ScanFloors(rows)
		if err != nil {
			return err
		}
		w.a.floors = conflict.RaiseFloors(w.a.floors, floors)
	}
	if loadTruncs {
		rows, err := br.Query()
		if err != nil {
			return fmt.Errorf("load truncations: %w", err)
		}
		if w.a.truncs, err = meta.ScanTruncations(rows); err != nil {
			return err
		}
		w.a.truncGen, w.a.truncsValid = tgen, true
	}
	w.truncs = maps.Clone(w.a.truncs)
	if err := br.Close(); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	var recheck []meta.RowKey
	for k, rv := range cached {
		if st := w.state[k]; st.present && st.xmin == rv.Xmin {
			vs[k] = rv
		} else {
			recheck = append(recheck, k) // written by someone else since
		}
	}
	if len(recheck) > 0 {
		more, err := meta.LoadVersions(ctx, w.tx, recheck)
		if err != nil {
			return err
		}
		for k, rv := range more {
			vs[k] = rv
		}
	}
	overlay(vs, pend)
	return w.useVersions(ctx, all, vs, inflight)
}

// flush sends the gathered and queued statements in one round trip, and
// checks that every write affected the rows it had to (so the metadata
// queued with them is true). Any error fails the attempt; the careful retry
// then finds the row.
func (w *txWriter) flush(ctx context.Context) error {
	stmts := append(w.plan.statements(), w.queue...)
	w.queue = nil
	if len(stmts) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, s := range stmts {
		b.Queue(s.sql, s.args...)
	}
	br := w.tx.SendBatch(ctx, b)
	for _, s := range stmts {
		if s.into != nil {
			if err := br.QueryRow().Scan(s.into); err != nil {
				br.Close()
				return fmt.Errorf("%s: %w", s.what, err)
			}
			continue
		}
		tag, err := br.Exec()
		if err == nil && s.rows >= 0 && tag.RowsAffected() != s.rows {
			err = fmt.Errorf("%d rows, not %d", tag.RowsAffected(), s.rows)
		}
		if err != nil {
			br.Close()
			return fmt.Errorf("%s: %w", s.what, err)
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("write batch: %w", err)
	}
	return nil
}

// unplan writes what the plan holds before a change of one of its rows is
// written on its own (the two must not change order).
func (w *txWriter) unplan(ctx context.Context, c *casualdb.Change) error {
	if w.plan.has(meta.RowKey{Table: c.Table, Key: casualdb.KeyString(c.Key)}) {
		return w.flush(ctx)
	}
	return nil
}

// bulk tells whether c's write may be gathered with others (see bulk.go).
func (w *txWriter) bulk(lt *localTable, c *casualdb.Change) bool {
	return !w.careful && !lt.replicaTriggers && !w.a.cfg.MergeColumns[c.Table] && len(c.Deltas) == 0
}
