package apply

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// The optimistic path writes the rows of a run in bulk: a few statements per
// table, each carrying every row in arrays (INSERT ... SELECT FROM unnest,
// UPDATE ... FROM unnest, DELETE ... USING unnest), instead of one statement
// per change. The decisions are made change by change as before; only the
// writes are gathered. A row written several times in one run is written
// once, with its final image: the run is one local transaction, so nobody
// can tell, and a row may appear only once in an UPDATE ... FROM.
//
// Not gathered (written change by change, in order, as before): tables
// with triggers that fire under session_replication_role = replica (ENABLE
// REPLICA or ENABLE ALWAYS: they must see every change), tables whose
// columns merge one by one, and changes carrying counter increments. The
// careful retry never gathers.
//
// Statements run deletes first, then updates, then inserts, which frees a
// value of another unique index before a row takes it in the common cases;
// if the order still makes a unique index complain, the optimistic attempt
// fails and the careful retry writes the changes one by one, in order.

// plannedRow is the final state of one row the run writes in bulk.
type plannedRow struct {
	lt  *localTable
	rel casualdb.Relation
	key []string
	// presentAtStart tells whether the row existed before the run wrote
	// it; present whether it exists now.
	presentAtStart, present bool
	// full tells whether values is a whole row image (an insert wrote it);
	// otherwise written marks the columns updates set.
	full    bool
	values  []casualdb.Value
	written []bool
}

// plan gathers the bulk writes of a run until the next flush.
type plan struct {
	rows  map[meta.RowKey]*plannedRow
	order []meta.RowKey
}

func (p *plan) empty() bool { return len(p.order) == 0 }

func (p *plan) has(k meta.RowKey) bool { _, ok := p.rows[k]; return ok }

// write records an insert or update (present: the row exists before it)
// or a delete of k.
func (p *plan) write(k meta.RowKey, lt *localTable, rel casualdb.Relation, c *casualdb.Change, present bool) {
	if p.rows == nil {
		p.rows = map[meta.RowKey]*plannedRow{}
	}
	r, ok := p.rows[k]
	if !ok {
		r = &plannedRow{lt: lt, rel: rel, key: c.Key, presentAtStart: present, present: present}
		p.rows[k] = r
		p.order = append(p.order, k)
	}
	switch {
	case c.Op == casualdb.OpDelete:
		r.present, r.full, r.values, r.written = false, false, nil, nil
	case !present:
		// An insert: a whole image.
		r.rel, r.present, r.full = rel, true, true
		r.values = slices.Clone(c.Values)
		r.written = nil
	default:
		// An update of the row as it is: its columns over what is known.
		// Under the description the row was planned with: the caller
		// flushes a row planned under another first (describedOtherwise).
		r.rel = rel
		if r.values == nil {
			r.values = make([]casualdb.Value, len(rel.Columns))
			for i := range r.values {
				r.values[i].Unchanged = true
			}
		}
		if !r.full && r.written == nil {
			r.written = make([]bool, len(rel.Columns))
		}
		for i, v := range c.Values {
			if v.Unchanged {
				continue
			}
			r.values[i] = v
			if !r.full {
				r.written[i] = true
			}
		}
	}
}

// describedOtherwise tells whether the plan holds a write of k under a
// description of its table other than rel.
func (p *plan) describedOtherwise(k meta.RowKey, rel casualdb.Relation) bool {
	r, ok := p.rows[k]
	return ok && !sameColumns(r.rel, rel)
}

// sameColumns tells whether two descriptions of a table list the same
// columns in the same order.
func sameColumns(a, b casualdb.Relation) bool {
	if len(a.Columns) != len(b.Columns) {
		return false
	}
	for i := range a.Columns {
		if a.Columns[i].Name != b.Columns[i].Name {
			return false
		}
	}
	return true
}

// statements turns the plan into bulk statements (deletes, updates,
// inserts; tables in name order) and empties it.
func (p *plan) statements() []stmt {
	type group struct {
		kind  int // 0 delete, 1 update, 2 insert
		table string
		sig   string // the relation's columns, and those set (shape)
		rows  []*plannedRow
	}
	groups := map[string]*group{}
	for _, k := range p.order {
		r := p.rows[k]
		var kind int
		sig := ""
		switch {
		case !r.presentAtStart && !r.present:
			continue // inserted and deleted within the run
		case r.presentAtStart && !r.present:
			kind = 0
		case !r.presentAtStart:
			kind = 2
			sig = shape(r.rel, nil)
		default:
			kind = 1
			set := r.setColumns()
			if !slices.Contains(set, true) {
				continue // nothing but unchanged values
			}
			sig = shape(r.rel, set)
		}
		id := fmt.Sprintf("%d\x00%s\x00%s", kind, k.Table, sig)
		g, ok := groups[id]
		if !ok {
			g = &group{kind: kind, table: k.Table, sig: sig}
			groups[id] = g
		}
		g.rows = append(g.rows, r)
	}
	ids := make([]string, 0, len(groups))
	for id := range groups {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]stmt, 0, len(ids))
	for _, id := range ids {
		g := groups[id]
		switch g.kind {
		case 0:
			out = append(out, bulkDelete(g.rows))
		case 1:
			out = append(out, bulkUpdate(g.rows))
		case 2:
			out = append(out, bulkInsert(g.rows))
		}
	}
	*p = plan{}
	return out
}

// setColumns returns which columns an update of r sets: the written ones,
// or every non-key column of a whole image.
func (r *plannedRow) setColumns() []bool {
	set := make([]bool, len(r.rel.Columns))
	for i, c := range r.rel.Columns {
		switch {
		case c.Key:
		case r.full:
			set[i] = true
		default:
			set[i] = r.written[i] && !r.values[i].Unchanged
		}
	}
	return set
}

// shape tells rows of one statement apart: rel's columns in order, each
// length-prefixed and marked set or not (only; nil: all of them). The statement
// takes the values of every row at the first row's column positions, so
// rows whose relation descriptions differ (a column dropped at the origin
// between two transactions of one run) must not share one: once they did,
// and apply read past a row's values.
func shape(rel casualdb.Relation, only []bool) string {
	n := 0
	for _, c := range rel.Columns {
		n += len(c.Name) + 8
	}
	b := make([]byte, 0, n)
	for i, c := range rel.Columns {
		// Length-prefixed: no name can pass for two.
		b = strconv.AppendInt(b, int64(len(c.Name)), 10)
		b = append(b, ':')
		b = append(b, c.Name...)
		if only == nil || only[i] {
			b = append(b, '+')
		} else {
			b = append(b, '-')
		}
	}
	return string(b)
}

// keyArrays returns the key columns of rows as one text array per column.
func keyArrays(lt *localTable, rows []*plannedRow) []any {
	cols := make([][]string, len(lt.keys))
	for _, r := range rows {
		for i := range lt.keys {
			cols[i] = append(cols[i], r.key[i])
		}
	}
	args := make([]any, len(cols))
	for i, c := range cols {
		args[i] = c
	}
	return args
}

// valueArray returns column i of rows as a text array (NULL for null).
func valueArray(rows []*plannedRow, i int) []*string {
	out := make([]*string, len(rows))
	for j, r := range rows {
		if v := r.values[i]; !v.Null {
			t := v.Text
			out[j] = &t
		}
	}
	return out
}

// keyJoin returns "(t.k1, t.k2) = (CAST(u.k1 AS type), ...)" over the key
// columns, with u's key columns named k0, k1, ...
func keyJoin(lt *localTable) string {
	var l, r []string
	for i, k := range lt.keys {
		l = append(l, "t."+pgx.Identifier{k}.Sanitize())
		r = append(r, fmt.Sprintf("CAST(u.k%d AS %s)", i, lt.keyTyp[i]))
	}
	return "(" + strings.Join(l, ", ") + ") = (" + strings.Join(r, ", ") + ")"
}

func bulkDelete(rows []*plannedRow) stmt {
	lt := rows[0].lt
	var unnest, names []string
	for i := range lt.keys {
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", i+1))
		names = append(names, fmt.Sprintf("k%d", i))
	}
	q := fmt.Sprintf("DELETE FROM %s t USING unnest(%s) AS u(%s) WHERE %s",
		lt.ident, strings.Join(unnest, ", "), strings.Join(names, ", "), keyJoin(lt))
	return stmt{sql: q, args: keyArrays(lt, rows), rows: int64(len(rows)), what: "delete from " + lt.name}
}

func bulkUpdate(rows []*plannedRow) stmt {
	lt, rel := rows[0].lt, rows[0].rel
	set := rows[0].setColumns()
	args := keyArrays(lt, rows)
	var unnest, names, sets []string
	for i := range lt.keys {
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", i+1))
		names = append(names, fmt.Sprintf("k%d", i))
	}
	for i, c := range rel.Columns {
		if !set[i] {
			continue
		}
		args = append(args, valueArray(rows, i))
		n := fmt.Sprintf("c%d", i)
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", len(args)))
		names = append(names, n)
		sets = append(sets, fmt.Sprintf("%s = CAST(u.%s AS %s)", pgx.Identifier{c.Name}.Sanitize(), n, lt.cols[c.Name]))
	}
	q := fmt.Sprintf("UPDATE %s t SET %s FROM unnest(%s) AS u(%s) WHERE %s",
		lt.ident, strings.Join(sets, ", "), strings.Join(unnest, ", "), strings.Join(names, ", "), keyJoin(lt))
	return stmt{sql: q, args: args, rows: int64(len(rows)), what: "update " + lt.name}
}

func bulkInsert(rows []*plannedRow) stmt {
	lt, rel := rows[0].lt, rows[0].rel
	var args []any
	var cols, unnest, names, vals []string
	for i, c := range rel.Columns {
		args = append(args, valueArray(rows, i))
		n := fmt.Sprintf("c%d", i)
		cols = append(cols, pgx.Identifier{c.Name}.Sanitize())
		unnest = append(unnest, fmt.Sprintf("$%d::text[]", len(args)))
		names = append(names, n)
		vals = append(vals, fmt.Sprintf("CAST(u.%s AS %s)", n, lt.cols[c.Name]))
	}
	q := fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM unnest(%s) AS u(%s)",
		lt.ident, strings.Join(cols, ", "), strings.Join(vals, ", "), strings.Join(unnest, ", "), strings.Join(names, ", "))
	return stmt{sql: q, args: args, rows: int64(len(rows)), what: "insert into " + lt.name}
}
