package parked

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// write is the statement that replays an entry. It returns one row, true
// when it inserted, or no row when there was nothing to write.
type write struct {
	sql       string
	args      []any
	table     *apply.Table
	published bool   // table is in the publication
	what      string // "public.accounts key 1"
	absent    string // what to say when it returns no row
	del       bool   // a delete: its row means "deleted"
}

// plan builds the write for p, or says why p cannot be replayed.
func plan(ctx context.Context, tx pgx.Tx, p meta.Parked, publication string) (*write, error) {
	what := p.Table + " key " + casualdb.DisplayKey(p.Key)
	pl := p.Decode()
	switch pl.Kind {
	case meta.ParkedMessage:
		return nil, fmt.Errorf("%w: it is a transport message that did not decode (%s), not a row; see it with casualdb parked --json, and discard it", ErrNotReplayable, ShortReason(p.Reason))
	case meta.ParkedTruncate:
		return nil, fmt.Errorf("%w: a TRUNCATE of %s is not replayed; truncate the table by hand if it should be, and discard the entry", ErrNotReplayable, p.Table)
	case meta.ParkedRemovedRow:
		t, err := apply.FindTable(ctx, tx, p.Table)
		if err != nil {
			return nil, err
		}
		published, err := inPublication(ctx, tx, publication, t)
		if err != nil {
			return nil, err
		}
		w, err := removedRowWrite(t, pl.Removed.Row)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		w.what, w.published = what, published
		return w, nil
	}
	rel, c := pl.Change.Relation, pl.Change.Change
	if rel.Schema == "" || rel.Name == "" {
		return nil, fmt.Errorf("%w: the parked change of %s names no table", ErrNotReplayable, what)
	}
	t, err := apply.DescribeTable(ctx, tx, rel.Schema, rel.Name)
	if err != nil {
		return nil, err
	}
	if !t.IsTable() {
		return nil, fmt.Errorf("%w: table %s does not exist here", casualdb.ErrSchemaMismatch, t)
	}
	published, err := inPublication(ctx, tx, publication, t)
	if err != nil {
		return nil, err
	}
	w, err := changeWrite(t, rel, c)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", pl.Kind, what, err)
	}
	w.what, w.published = what, published
	return w, nil
}

// changeWrite builds the write of a parked change: an upsert of its values
// for an insert or update, a delete by key for a delete. Each value is cast
// from its text form to the local column type, as apply does.
func changeWrite(t *apply.Table, rel casualdb.Relation, c casualdb.Change) (*write, error) {
	w := &write{table: t}
	if c.Op == casualdb.OpDelete {
		keyIdx := rel.KeyColumns()
		if len(keyIdx) == 0 || len(keyIdx) != len(c.Key) {
			return nil, fmt.Errorf("%w: the change has %d key values for %d key columns", ErrNotReplayable, len(c.Key), len(keyIdx))
		}
		var conds []string
		for i, idx := range keyIdx {
			col, ok := t.Column(rel.Columns[idx].Name)
			if !ok {
				return nil, fmt.Errorf("%w: table %s lacks key column %s", casualdb.ErrSchemaMismatch, t, rel.Columns[idx].Name)
			}
			w.args = append(w.args, c.Key[i])
			conds = append(conds, fmt.Sprintf("%s = CAST($%d::text AS %s)", pgx.Identifier{col.Name}.Sanitize(), len(w.args), col.Type))
		}
		w.sql = fmt.Sprintf("DELETE FROM %s WHERE %s RETURNING false", t.Ident(), strings.Join(conds, " AND "))
		w.absent, w.del = "the row was already absent here", true
		return w, nil
	}
	if len(c.Deltas) > 0 {
		// A local write ships new minus old as the increment: the sites
		// that applied this change would count its increments twice.
		names := make([]string, 0, len(c.Deltas))
		for n := range c.Deltas {
			names = append(names, n)
		}
		slices.Sort(names)
		return nil, fmt.Errorf("%w: it writes counter column(s) %s, and a replayed write would count the increment again at every site that applied it; adjust the row by hand, then discard the entry",
			ErrNotReplayable, strings.Join(names, ", "))
	}
	if len(c.Values) != len(rel.Columns) {
		return nil, fmt.Errorf("%w: the change has %d values for %d columns", ErrNotReplayable, len(c.Values), len(rel.Columns))
	}
	var unchanged, missing, names, vals []string
	for i, rc := range rel.Columns {
		if c.Values[i].Unchanged {
			unchanged = append(unchanged, rc.Name)
			continue
		}
		col, ok := t.Column(rc.Name)
		if !ok {
			missing = append(missing, rc.Name)
			continue
		}
		var arg any // SQL NULL
		if !c.Values[i].Null {
			arg = c.Values[i].Text
		}
		w.args = append(w.args, arg)
		names = append(names, col.Name)
		vals = append(vals, fmt.Sprintf("CAST($%d::text AS %s)", len(w.args), col.Type))
	}
	switch {
	case len(unchanged) > 0:
		return nil, fmt.Errorf("%w: %w: the origin did not send the value of %s (unchanged and stored out of line), and writing the row without it would guess; write the row by hand from the origin's copy, then discard the entry (REPLICA IDENTITY FULL on %s avoids this)",
			ErrNotReplayable, casualdb.ErrUnchangedToast, strings.Join(unchanged, ", "), rel.Table)
	case len(missing) > 0:
		return nil, fmt.Errorf("%w: table %s lacks column(s) %s that the change writes; add them and replay again", casualdb.ErrSchemaMismatch, t, strings.Join(missing, ", "))
	}
	sql, err := upsert(t, names, "VALUES ("+strings.Join(vals, ", ")+")")
	if err != nil {
		return nil, err
	}
	w.sql = sql
	w.absent = "nothing to write: the row is already there and has only identity columns"
	return w, nil
}

// removedRowWrite builds the upsert of a row that apply removed to settle a
// unique collision. The row is row_to_json of this site's row, so
// json_populate_record reads each value back as the local column type
// (arrays, json, bytea and all); generated columns are computed again.
func removedRowWrite(t *apply.Table, row json.RawMessage) (*write, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(row, &fields); err != nil {
		return nil, fmt.Errorf("%w: the parked row is not a JSON object: %v", ErrNotReplayable, err)
	}
	var missing, names, sel []string
	for name := range fields {
		if _, ok := t.Column(name); !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("%w: table %s lacks column(s) %s that the row has", casualdb.ErrSchemaMismatch, t, strings.Join(missing, ", "))
	}
	for _, c := range t.Columns { // in the table's order
		if _, ok := fields[c.Name]; ok && !c.Generated {
			names = append(names, c.Name)
			sel = append(sel, "r."+pgx.Identifier{c.Name}.Sanitize())
		}
	}
	sql, err := upsert(t, names, fmt.Sprintf("SELECT %s FROM json_populate_record(NULL::%s, $1::json) AS r", strings.Join(sel, ", "), t.Ident()))
	if err != nil {
		return nil, err
	}
	return &write{sql: sql, args: []any{string(row)}, table: t, absent: "nothing to write: the row is already there and has only identity columns"}, nil
}

// upsert returns INSERT INTO t (names) source ON CONFLICT (primary key) DO
// UPDATE SET every written column but the key (the key when that is all),
// returning whether it inserted: a row the statement inserted has no xmax,
// one it updated carries the statement's own row lock there.
func upsert(t *apply.Table, names []string, source string) (string, error) {
	if len(t.Keys) == 0 {
		return "", fmt.Errorf("%w: %w: %s here", ErrNotReplayable, casualdb.ErrNoPrimaryKey, t)
	}
	for _, k := range t.Keys {
		if !slices.Contains(names, k) {
			return "", fmt.Errorf("%w: %w: the primary key of %s here, (%s), is not all in the parked row", ErrNotReplayable, casualdb.ErrSchemaMismatch, t, strings.Join(t.Keys, ", "))
		}
	}
	var cols, sets, keySets, keys []string
	override := ""
	for _, n := range names {
		c, _ := t.Column(n)
		id := pgx.Identifier{n}.Sanitize()
		cols = append(cols, id)
		set := id + " = EXCLUDED." + id
		switch {
		case c.IdentityAlways:
			// Kept from the origin on insert; never updated (PostgreSQL
			// allows only DEFAULT).
			override = " OVERRIDING SYSTEM VALUE"
		case c.Key:
			keySets = append(keySets, set)
		default:
			sets = append(sets, set)
		}
	}
	for _, k := range t.Keys {
		keys = append(keys, pgx.Identifier{k}.Sanitize())
	}
	if len(sets) == 0 {
		// Only key columns: rewriting them is still a write, which capture
		// versions and ships like any other.
		sets = keySets
	}
	action := "DO NOTHING"
	if len(sets) > 0 {
		action = "DO UPDATE SET " + strings.Join(sets, ", ")
	}
	return fmt.Sprintf("INSERT INTO %s (%s)%s %s ON CONFLICT (%s) %s RETURNING xmax = 0",
		t.Ident(), strings.Join(cols, ", "), override, source, strings.Join(keys, ", "), action), nil
}
