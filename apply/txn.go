package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
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
		if st.present || w.bad[k.Table] != nil {
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

// txWriter carries the state of one apply transaction.
type txWriter struct {
	a        *Applier
	tx       dbConn
	xid      uint32 // the transaction's id: the xmin of every row it writes outside savepoints
	careful  bool
	state    map[meta.RowKey]*rowState
	tables   map[string]*localTable
	bad      map[string]error                // tables whose changes are parked
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

// prepare opens the transaction, resolves the tables, locks every row the
// run touches, and reads their recorded versions, in one round trip.
func (w *txWriter) prepare(ctx context.Context, run []inMsg) error {
	w.bad = map[string]error{}
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
			if _, ok := w.tables[c.Table]; !ok && w.bad[c.Table] == nil {
				lt, err := w.a.table(ctx, im.tx.Relations[c.Table])
				if err != nil {
					if !errors.Is(err, casualdb.ErrSchemaMismatch) {
						return err
					}
					w.bad[c.Table] = err
				} else {
					w.tables[c.Table] = lt
				}
			}
			if c.Op == casualdb.OpTruncate || w.bad[c.Table] != nil {
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
	if len(need) > 0 {
		sql, args := meta.VersionsQuery(need)
		b.Queue(sql, args...)
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

// presentQuery selects the rows of lt with the given keys (one row each).
func presentQuery(lt *localTable, keys [][]string) (string, []any) {
	return keyRowsQuery(lt, keys, "1", false)
}

// lockQuery locks the rows of lt with the given keys, in the order of their
// typed values (the primary key's order, as a local multi-row UPDATE that
// scans it would), and returns the canonical key and xmin of each present
// one; see scanLocked.
func lockQuery(lt *localTable, keys [][]string) (string, []any) {
	return keyRowsQuery(lt, keys, lt.keyText()+", xmin::text", true)
}

// keyRowsQuery selects sel from the rows of lt with the given keys, one
// text array parameter per key column; if lock, it locks them in key order.
// Each key is looked up on its own (a lateral subquery limited to one row)
// so that the plan probes the primary key whatever the planner believes of
// the table's size: the join of a key array to a table that was empty when
// the session planned it scanned the whole table for every key (the plan
// cache keeps a generic plan). The names the query gives the key array and
// the table are prefixed so that they cannot collide with a user's column
// or table.
func keyRowsQuery(lt *localTable, keys [][]string, sel string, lock bool) (string, []any) {
	cols := make([][]string, len(lt.keys))
	for _, k := range keys {
		for i := range lt.keys {
			if i < len(k) {
				cols[i] = append(cols[i], k[i])
			}
		}
	}
	var unnest, names, casts, order, keyCols, keyRefs []string
	args := make([]any, len(cols))
	for i, k := range lt.keys {
		names = append(names, fmt.Sprintf("k%d", i))
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", i+1))
		casts = append(casts, fmt.Sprintf("CAST(u.k%d AS %s) AS casualdb_k%d", i, lt.keyTyp[i], i))
		order = append(order, fmt.Sprint(i+1))
		keyCols = append(keyCols, "casualdb_t."+pgx.Identifier{k}.Sanitize())
		keyRefs = append(keyRefs, fmt.Sprintf("casualdb_keys.casualdb_k%d", i))
		args[i] = cols[i]
	}
	forUpdate, orderBy := "", ""
	if lock {
		// The nested loop takes the keys in this order, and locks each
		// row as it finds it.
		forUpdate, orderBy = " FOR UPDATE", " ORDER BY "+strings.Join(order, ", ")
	}
	q := fmt.Sprintf(`SELECT casualdb_row.* FROM (SELECT %s FROM unnest(%s) AS u(%s)%s) AS casualdb_keys
		CROSS JOIN LATERAL (SELECT %s FROM %s AS casualdb_t WHERE (%s) = (%s) LIMIT 1%s) AS casualdb_row`,
		strings.Join(casts, ", "), strings.Join(unnest, ", "), strings.Join(names, ", "), orderBy,
		sel, lt.ident, strings.Join(keyCols, ", "), strings.Join(keyRefs, ", "), forUpdate)
	return q, args
}

// scanLocked reads (and closes) the rows of lockQuery: xmin by canonical key.
func scanLocked(lt *localTable, rows pgx.Rows) (map[string]uint32, error) {
	defer rows.Close()
	out := map[string]uint32{}
	for rows.Next() {
		vals := make([]string, len(lt.keys)+1)
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, fmt.Errorf("lock rows of %s: %w", lt.name, err)
		}
		x, _ := strconv.ParseUint(vals[len(lt.keys)], 10, 32)
		out[casualdb.KeyString(vals[:len(lt.keys)])] = uint32(x)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock rows of %s: %w", lt.name, err)
	}
	return out, nil
}

// change merges one row change.
func (w *txWriter) change(ctx context.Context, im inMsg, c *casualdb.Change) error {
	if err := w.bad[c.Table]; err != nil {
		return w.park(ctx, im, c, err)
	}
	lt := w.tables[c.Table]
	if c.Op == casualdb.OpTruncate {
		return w.truncate(ctx, lt, c)
	}
	rk := meta.RowKey{Table: c.Table, Key: casualdb.KeyString(c.Key)}
	st := w.state[rk]
	var stored *conflict.Row
	if st.rv != nil {
		stored = &conflict.Row{Version: st.rv.Version, Deleted: st.rv.Deleted, Floor: st.rv.Floor}
	}
	t, truncated := w.truncs[c.Table]
	if truncated && (stored == nil || conflict.Less(stored.Version, t)) {
		// Everything older than the table's truncation is deleted.
		tr := &conflict.Row{Version: casualdb.Version{HLC: t.HLC, Origin: t.Origin}, Deleted: true}
		if stored != nil {
			tr.Version.VC, tr.Floor = stored.Version.VC, stored.Floor
		}
		stored = tr
	}
	policy := w.a.policy(c.Table)
	d := conflict.DecideRow(stored, c.Version, c.Op == casualdb.OpDelete, policy)
	if truncated && conflict.Less(c.Version, t) && d.Apply {
		// Written before the truncate: it never comes back. Its clock is
		// still merged, like any version's.
		d.Apply, d.Outcome, d.Rule = false, conflict.Stale, "truncated"
		d.Stored, d.Deleted = stored.Version, stored.Deleted
		d.Stored.VC = conflict.Join(stored.Version.VC, c.Version.VC)
	}
	if w.a.cfg.MergeColumns[c.Table] && c.Op != casualdb.OpDelete && len(c.Columns) > 0 && st.present && st.rv != nil &&
		!stored.Deleted && d.Outcome != conflict.Stale && conflict.Alive(c.Version.VC, stored.Floor, policy) {
		return w.mergeColumns(ctx, im, lt, c, st, rk, d)
	}
	if d.Outcome == conflict.Conflict {
		if err := w.logConflict(ctx, lt, im, c, st, d.Decision); err != nil {
			return err
		}
		w.res.conflicts++
	}
	if !d.Apply {
		if st.rv != nil {
			rv := *st.rv
			rv.Version, rv.Floor, rv.Deleted = d.Stored, d.Floor, d.Deleted
			if d.Stored.Stamp() == c.Version.Stamp() {
				rv.OriginLSN = im.tx.LSN
			}
			if len(c.Deltas) > 0 && st.present && d.Outcome != conflict.Stale && !(truncated && conflict.Less(c.Version, t)) &&
				(stored == nil || conflict.Alive(c.Version.VC, stored.Floor, policy)) {
				// The row image lost, the increments count all the same.
				xmin, ok, err := w.addDeltas(ctx, im, lt, c)
				if err != nil {
					return err
				}
				if ok {
					st.xmin, rv.Xmin = xmin, xmin
					w.res.changes++
				}
			}
			st.rv = &rv
			w.written[rk] = rv
		}
		return nil
	}
	rv := meta.RowVersion{Version: d.Stored, Floor: d.Floor, Columns: c.Columns, OriginLSN: im.tx.LSN}
	switch c.Op {
	case casualdb.OpDelete:
		switch {
		case !st.present:
		case w.bulk(lt, c):
			w.plan.write(rk, lt, im.tx.Relations[c.Table], c, true)
		default:
			if err := w.exec(ctx, im, c, "DELETE FROM "+lt.ident+" WHERE "+lt.keyMatch(1), keyArgs(c.Key)...); err != nil {
				return err
			}
		}
		st.present = false
		rv.Deleted = true
	default:
		unchanged := false
		for _, v := range c.Values {
			unchanged = unchanged || v.Unchanged
		}
		if unchanged && (!st.present || d.Outcome != conflict.Overwrite) {
			// The origin's value of a TOASTed column it did not change is
			// not in the WAL, and this site's value is not the one the
			// origin overwrote: never write NULL, never guess.
			return w.park(ctx, im, c, fmt.Errorf("%w: set REPLICA IDENTITY FULL on %s to ship such values", casualdb.ErrUnchangedToast, c.Table))
		}
		rel := im.tx.Relations[c.Table]
		var xmin uint32
		var ok bool
		var err error
		switch {
		case w.bulk(lt, c):
			w.plan.write(rk, lt, rel, c, st.present)
			xmin, ok = w.xid, true
			if !st.present {
				w.inserted[rk] = true
			}
		case st.present:
			xmin, ok, err = w.update(ctx, im, lt, rel, c)
		default:
			xmin, ok, err = w.insert(ctx, im, lt, rel, c)
			if ok {
				w.inserted[rk] = true
			}
		}
		if err != nil || !ok {
			return err
		}
		st.present, st.xmin = true, xmin
		rv.Xmin = xmin
	}
	st.rv = &rv
	w.written[rk] = rv
	w.res.changes++
	return nil
}

func (w *txWriter) insert(ctx context.Context, im inMsg, lt *localTable, rel casualdb.Relation, c *casualdb.Change) (uint32, bool, error) {
	var cols, vals []string
	var args []any
	for i, col := range rel.Columns {
		cols = append(cols, pgx.Identifier{col.Name}.Sanitize())
		vals = append(vals, fmt.Sprintf("CAST($%d::text AS %s)", i+1, lt.cols[col.Name]))
		args = append(args, textArg(c.Values[i]))
	}
	q := fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) RETURNING xmin::text", lt.ident, strings.Join(cols, ", "), strings.Join(vals, ", "))
	return w.returningXmin(ctx, im, c, q, args)
}

func (w *txWriter) update(ctx context.Context, im inMsg, lt *localTable, rel casualdb.Relation, c *casualdb.Change) (uint32, bool, error) {
	var sets []string
	args := keyArgs(c.Key)
	for i, col := range rel.Columns {
		name := pgx.Identifier{col.Name}.Sanitize()
		if delta, ok := c.Deltas[col.Name]; ok {
			// A counter: this site's value plus the origin's increment.
			args = append(args, delta)
			sets = append(sets, fmt.Sprintf("%s = coalesce(%s, 0) + CAST($%d::text AS numeric)", name, name, len(args)))
			continue
		}
		if c.Values[i].Unchanged {
			continue
		}
		args = append(args, textArg(c.Values[i]))
		sets = append(sets, fmt.Sprintf("%s = CAST($%d::text AS %s)", name, len(args), lt.cols[col.Name]))
	}
	q := fmt.Sprintf("UPDATE %s SET %s WHERE %s RETURNING xmin::text", lt.ident, strings.Join(sets, ", "), lt.keyMatch(1))
	return w.returningXmin(ctx, im, c, q, args)
}

// addDeltas adds a change's counter increments to the row and nothing else.
func (w *txWriter) addDeltas(ctx context.Context, im inMsg, lt *localTable, c *casualdb.Change) (uint32, bool, error) {
	var sets []string
	args := keyArgs(c.Key)
	for col, delta := range c.Deltas {
		if _, ok := lt.cols[col]; !ok {
			continue // checked by the schema comparison; never write blind
		}
		name := pgx.Identifier{col}.Sanitize()
		args = append(args, delta)
		sets = append(sets, fmt.Sprintf("%s = coalesce(%s, 0) + CAST($%d::text AS numeric)", name, name, len(args)))
	}
	if len(sets) == 0 {
		return 0, false, nil
	}
	sort.Strings(sets)
	q := fmt.Sprintf("UPDATE %s SET %s WHERE %s RETURNING xmin::text", lt.ident, strings.Join(sets, ", "), lt.keyMatch(1))
	return w.returningXmin(ctx, im, c, q, args)
}

func textArg(v casualdb.Value) any {
	if v.Null {
		return nil
	}
	return v.Text
}

// returningXmin runs a write that returns the new row's xmin. ok is false
// when the change was parked instead.
func (w *txWriter) returningXmin(ctx context.Context, im inMsg, c *casualdb.Change, q string, args []any) (uint32, bool, error) {
	if !w.careful {
		if err := w.unplan(ctx, c); err != nil {
			return 0, false, err
		}
		w.queue = append(w.queue, stmt{sql: q, args: args, rows: 1, what: "write " + c.Table + " " + casualdb.KeyString(c.Key)})
		// No savepoint in this mode: the new row version's xmin is the
		// transaction's id, and the metadata can be queued before the write
		// has run.
		return w.xid, true, nil
	}
	var xmin string
	err := w.guard(ctx, im, c, func() error { return w.tx.QueryRow(ctx, q, args...).Scan(&xmin) })
	if err != nil {
		if errors.Is(err, errParked) {
			return 0, false, nil
		}
		return 0, false, err
	}
	x, _ := strconv.ParseUint(xmin, 10, 32)
	return uint32(x), true, nil
}

func (w *txWriter) exec(ctx context.Context, im inMsg, c *casualdb.Change, q string, args ...any) error {
	if !w.careful {
		if err := w.unplan(ctx, c); err != nil {
			return err
		}
		w.queue = append(w.queue, stmt{sql: q, args: args, rows: 1, what: "write " + c.Table + " " + casualdb.KeyString(c.Key)})
		return nil
	}
	err := w.guard(ctx, im, c, func() error {
		_, err := w.tx.Exec(ctx, q, args...)
		return err
	})
	if errors.Is(err, errParked) {
		return nil
	}
	return err
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

// errParked reports that guard parked the change.
var errParked = errors.New("change parked")

// guard runs one row write. In careful mode it runs under a savepoint, and a
// write the database refuses for this row's sake is parked, or, for a
// collision on a unique index other than the primary key, resolved (see
// resolveUnique).
func (w *txWriter) guard(ctx context.Context, im inMsg, c *casualdb.Change, f func() error) error {
	if !w.careful {
		return f()
	}
	ferr, err := w.savepoint(ctx, f)
	if err != nil || ferr == nil {
		return err
	}
	if !parkable(ferr) {
		return ferr
	}
	var pe *pgconn.PgError
	if errors.As(ferr, &pe) && pe.Code == "23505" {
		if w.keyTaken(ctx, c) {
			// The primary key was taken by a local insert that committed
			// meanwhile: a race, not a bad row.
			return fmt.Errorf("%w: %v", errRace, ferr)
		}
		if c.Op != casualdb.OpDelete && pe.ConstraintName != "" {
			rerr, err := w.savepoint(ctx, func() error { return w.resolveUnique(ctx, im, c, pe.ConstraintName, f) })
			switch {
			case err != nil:
				return err
			case rerr == nil || errors.Is(rerr, errParked):
				return rerr
			case errors.Is(rerr, errUnresolved) || parkable(rerr):
				ferr = fmt.Errorf("%w (%v)", ferr, rerr)
			default:
				return rerr
			}
		}
	}
	if err := w.park(ctx, im, c, ferr); err != nil {
		return err
	}
	return errParked
}

// savepoint runs f under a savepoint: released when f succeeds or parked
// the change, rolled back to otherwise. ferr is f's error; err is the
// savepoint's own.
func (w *txWriter) savepoint(ctx context.Context, f func() error) (ferr, err error) {
	if _, err := w.tx.Exec(ctx, "SAVEPOINT casualdb_change"); err != nil {
		return nil, fmt.Errorf("savepoint: %w", err)
	}
	ferr = f()
	if ferr == nil || errors.Is(ferr, errParked) {
		if _, err := w.tx.Exec(ctx, "RELEASE SAVEPOINT casualdb_change"); err != nil {
			return nil, fmt.Errorf("release savepoint: %w", err)
		}
		return ferr, nil
	}
	if _, err := w.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT casualdb_change"); err != nil {
		return nil, fmt.Errorf("rollback to savepoint: %w", err)
	}
	return ferr, nil
}

func (w *txWriter) keyTaken(ctx context.Context, c *casualdb.Change) bool {
	lt := w.tables[c.Table]
	var one int
	err := w.tx.QueryRow(ctx, "SELECT 1 FROM "+lt.ident+" WHERE "+lt.keyMatch(1), keyArgs(c.Key)...).Scan(&one)
	return err == nil
}

// parkable tells the errors that belong to the row (constraints, bad
// values, missing columns) from those that belong to the moment (deadlocks,
// lost connections), which a retry resolves.
func parkable(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23", "42", "2F", "P0":
		return true
	}
	return false
}

func isRetryable(err error) bool {
	if errors.Is(err, errRace) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return true // the connection is fine; the transaction is retried
	}
	return false
}

func (w *txWriter) park(ctx context.Context, im inMsg, c *casualdb.Change, cause error) error {
	payload, err := json.Marshal(&meta.ParkedChange{Relation: im.tx.Relations[c.Table], Change: *c, CommitTime: im.tx.CommitTime})
	if err != nil {
		return fmt.Errorf("park change: %w", err)
	}
	p := meta.Parked{Origin: im.origin, Seq: im.seq, LSN: im.tx.LSN, Table: c.Table, Key: casualdb.KeyString(c.Key), Reason: cause.Error(), Payload: payload}
	if err := meta.Park(ctx, w.tx, p); err != nil {
		return err
	}
	w.a.log.Warn("parked change", "origin", im.origin, "table", c.Table, "key", p.Key, "reason", cause)
	w.res.parked++
	return nil
}

// logConflict records a true conflict with both row images.
func (w *txWriter) logConflict(ctx context.Context, lt *localTable, im inMsg, c *casualdb.Change, st *rowState, d conflict.Decision) error {
	cf := meta.Conflict{Table: c.Table, Key: casualdb.KeyString(c.Key), Rule: d.Rule, Winner: "local", RemoteVersion: c.Version}
	switch {
	case d.Rule == RuleColumns && d.Apply:
		cf.Winner = "merged"
	case d.Apply:
		cf.Winner = "remote"
	}
	if st.rv != nil {
		cf.LocalVersion = st.rv.Version
	}
	if st.present && lt != nil {
		// The local image must include this transaction's earlier writes.
		if err := w.flush(ctx); err != nil {
			return err
		}
		var row string
		err := w.tx.QueryRow(ctx, "SELECT row_to_json(t)::text FROM "+lt.ident+" t WHERE "+lt.keyMatch(1), keyArgs(c.Key)...).Scan(&row)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("read local row for conflict log: %w", err)
		}
		cf.LocalRow = json.RawMessage(row)
	}
	cf.RemoteRow = rowImage(im.tx.Relations[c.Table], c)
	return meta.LogConflict(ctx, w.tx, cf)
}

// truncate applies a remote TRUNCATE: rows whose version is older than the
// truncate go; rows written later (anywhere) stay.
func (w *txWriter) truncate(ctx context.Context, lt *localTable, c *casualdb.Change) error {
	// Write what this transaction decided so far before reading the table.
	if err := w.flush(ctx); err != nil {
		return err
	}
	if _, err := w.tx.Exec(ctx, "LOCK TABLE "+lt.ident+" IN SHARE ROW EXCLUSIVE MODE"); err != nil {
		return fmt.Errorf("lock %s for truncate: %w", lt.name, err)
	}
	if err := w.waitCapture(ctx); err != nil {
		return err
	}
	// Every local version in the database: the marker removes those it
	// supersedes there, and capture must not record one of them after.
	// Before this transaction writes versions of its own: the recorder
	// would wait for them (a second truncate in the same transaction can
	// still meet that: the wait is bounded, and the retry finds the
	// versions recorded).
	fctx, cancel := context.WithTimeout(ctx, flushTimeout)
	err := w.a.cfg.Capture.FlushVersions(fctx)
	cancel()
	if err != nil {
		return fmt.Errorf("wait for capture to record its versions: %w", err)
	}
	// Then record what this transaction decided so far.
	if err := w.saveWritten(ctx, w.tx); err != nil {
		return err
	}
	rows, err := w.tx.Query(ctx, "SELECT "+lt.keyText()+" FROM "+lt.ident)
	if err != nil {
		return fmt.Errorf("truncate %s: %w", lt.name, err)
	}
	var keys [][]string
	var rks []meta.RowKey
	for rows.Next() {
		vals := make([]string, len(lt.keys))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return fmt.Errorf("truncate %s: %w", lt.name, err)
		}
		keys = append(keys, vals)
		rks = append(rks, meta.RowKey{Table: lt.name, Key: casualdb.KeyString(vals)})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("truncate %s: %w", lt.name, err)
	}
	vs, err := meta.LoadVersions(ctx, w.tx, rks)
	if err != nil {
		return err
	}
	for i, k := range keys {
		if rv, ok := vs[rks[i]]; ok && !conflict.Less(rv.Version, c.Version) {
			continue // written after the truncate: it stays
		}
		if _, err := w.tx.Exec(ctx, "DELETE FROM "+lt.ident+" WHERE "+lt.keyMatch(1), keyArgs(k)...); err != nil {
			return fmt.Errorf("truncate %s: %w", lt.name, err)
		}
		if st, ok := w.state[rks[i]]; ok {
			st.present = false
		}
	}
	if err := meta.SaveTruncation(ctx, w.tx, lt.name, c.Version); err != nil {
		return err
	}
	if t, ok := w.raised[lt.name]; !ok || conflict.Less(t, c.Version) {
		w.raised[lt.name] = c.Version
	}
	w.a.truncsValid = false // read them again next time
	// The marker removed the versions it supersedes, those this
	// transaction recorded included.
	for k, rv := range w.all {
		if k.Table == lt.name && conflict.Less(rv.Version, c.Version) {
			delete(w.all, k)
		}
	}
	if t, ok := w.truncs[lt.name]; !ok || conflict.Less(t, c.Version) {
		w.truncs[lt.name] = c.Version
	}
	for k, st := range w.state {
		if k.Table == lt.name && st.rv != nil && conflict.Less(st.rv.Version, c.Version) {
			st.rv = nil
		}
	}
	w.res.changes++
	return nil
}

// flushTimeout bounds apply's wait for capture to record its versions.
const flushTimeout = 5 * time.Second

// tableRecheck is how long a table's local description is trusted: a
// trigger or column added since shows up within it.
const tableRecheck = 30 * time.Second

// table returns the local description of rel's table, cached.
func (a *Applier) table(ctx context.Context, rel casualdb.Relation) (*localTable, error) {
	if lt, ok := a.tables[rel.Table]; ok && time.Since(lt.described) < tableRecheck {
		if err := lt.check(rel); err == nil {
			return lt, nil
		}
	}
	lt, err := describeLocal(ctx, a.main, rel)
	if err != nil {
		delete(a.tables, rel.Table)
		return nil, err
	}
	a.tables[rel.Table] = lt
	return lt, nil
}

func sameVersion(a, b casualdb.Version) bool {
	return a.HLC == b.HLC && a.Origin == b.Origin && conflict.CompareClocks(a.VC, b.VC) == conflict.Equal
}
