package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// change merges one row change.
func (w *txWriter) change(ctx context.Context, im inMsg, c *casualdb.Change) error {
	if err := w.bad[relOf{im.tx, c.Table}]; err != nil {
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
	in := c.Version
	var floorLSNs map[casualdb.SiteID]uint64 // the deletes merged into the row's floor
	if st.rv != nil {
		floorLSNs = st.rv.FloorLSNs
		if conflict.SawDeletes(floorLSNs, im.tx.Origin, im.tx.LSN, im.tx.Deps) {
			// Its transaction saw every delete of the floor, which its
			// clock may not show: its origin had collected the row's
			// tombstone and started the row's clock afresh.
			in = conflict.SeenFloor(stored, in)
		}
	}
	// A floor recorded before its deletes were kept stays unknown.
	if c.Op == casualdb.OpDelete && (st.rv == nil || len(st.rv.Floor) == 0 || len(floorLSNs) > 0) {
		floorLSNs = conflict.JoinFloorLSNs(floorLSNs, map[casualdb.SiteID]uint64{im.tx.Origin: im.tx.LSN})
	}
	d := conflict.DecideRow(stored, in, c.Op == casualdb.OpDelete, policy)
	if truncated && conflict.Less(in, t) && d.Apply {
		// Written before the truncate: it never comes back. Its clock is
		// still merged, like any version's.
		d.Apply, d.Outcome, d.Rule = false, conflict.Stale, "truncated"
		d.Stored, d.Deleted = stored.Version, stored.Deleted
		d.Stored.VC = conflict.Join(stored.Version.VC, in.VC)
	}
	if len(d.Floor) == 0 {
		floorLSNs = nil
	}
	if st.rv == nil {
		// No version here: when this site collected the row's tombstone,
		// the row's clock keeps this site's counter from the table's
		// floor, so that its next local write reuses no dot the row had
		// (other sites may remember it).
		if f, ok := w.a.floors[c.Table]; ok && f.VC[w.a.cfg.Site] > d.Stored.VC[w.a.cfg.Site] {
			d.Stored.VC = conflict.Join(d.Stored.VC, casualdb.VectorClock{w.a.cfg.Site: f.VC[w.a.cfg.Site]})
		}
	}
	if w.a.cfg.MergeColumns[c.Table] && c.Op != casualdb.OpDelete && len(c.Columns) > 0 && st.present && st.rv != nil &&
		!stored.Deleted && d.Outcome != conflict.Stale && conflict.Alive(in.VC, stored.Floor, policy) {
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
			rv.Version, rv.Floor, rv.Deleted, rv.FloorLSNs = d.Stored, d.Floor, d.Deleted, floorLSNs
			if d.Stored.Stamp() == c.Version.Stamp() {
				rv.OriginLSN = im.tx.LSN
			}
			if len(c.Deltas) > 0 && st.present && d.Outcome != conflict.Stale && !(truncated && conflict.Less(c.Version, t)) &&
				(stored == nil || conflict.Alive(in.VC, stored.Floor, policy)) {
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
	// The incoming row image wins whole: its claims describe its values.
	rv := meta.RowVersion{Version: d.Stored, Floor: d.Floor, Columns: c.Columns, Claims: c.Claims, OriginLSN: im.tx.LSN, FloorLSNs: floorLSNs}
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
			if w.plan.describedOtherwise(rk, rel) {
				// Its columns' positions differ from what the plan holds
				// of the row (the origin's table changed within the
				// run): write that first, then plan this over it.
				if err := w.flush(ctx); err != nil {
					return err
				}
			}
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
			sets = append(sets, addDeltaSQL(name, delta, &args))
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
		sets = append(sets, addDeltaSQL(name, delta, &args))
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

// addDeltaSQL returns the SET clause that adds delta (appended to args) to
// the counter column name (quoted): this site's value plus the origin's
// increment, NULL counting as 0.
func addDeltaSQL(name, delta string, args *[]any) string {
	*args = append(*args, delta)
	return fmt.Sprintf("%s = coalesce(%s, 0) + CAST($%d::text AS numeric)", name, name, len(*args))
}
