package apply

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
)

// localTable is a replicated table as this site has it.
type localTable struct {
	name   string // schema.name
	ident  string // quoted identifier
	cols   map[string]string
	keys   []string // primary-key column names in key order
	keyTyp []string
	// replicaTriggers tells whether the table has triggers that fire in
	// apply's sessions (ENABLE REPLICA or ENABLE ALWAYS): their changes are
	// written one by one, so that the triggers see each.
	replicaTriggers bool
	described       time.Time
}

// describeLocal reads the local definition of rel's table.
func describeLocal(ctx context.Context, conn *pgx.Conn, rel casualdb.Relation) (*localTable, error) {
	d, err := DescribeTable(ctx, conn, rel.Schema, rel.Name)
	if err != nil {
		return nil, err
	}
	t := &localTable{name: rel.Table, ident: d.Ident(), cols: map[string]string{}, keys: d.Keys}
	for _, c := range d.Columns {
		t.cols[c.Name] = c.Type
	}
	for _, k := range t.keys {
		t.keyTyp = append(t.keyTyp, t.cols[k])
	}
	if err := t.check(rel); err != nil {
		return nil, err
	}
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1::regclass AND tgenabled IN ('A', 'R') AND NOT tgisinternal)`,
		t.ident).Scan(&t.replicaTriggers)
	if err != nil {
		return nil, fmt.Errorf("describe local table %s: triggers: %w", rel.Table, err)
	}
	t.described = time.Now()
	return t, nil
}

// check compares the origin's description with the local table: every
// column the origin sends must exist here, and the primary keys must match.
//
// Apply checks every transaction's description (txWriter.resolve): a fit
// allocates nothing.
func (t *localTable) check(rel casualdb.Relation) error {
	var missing []string
	k, keysMatch := 0, true
	for _, c := range rel.Columns {
		if _, ok := t.cols[c.Name]; !ok {
			missing = append(missing, c.Name)
		}
		if c.Key {
			keysMatch = keysMatch && k < len(t.keys) && t.keys[k] == c.Name
			k++
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: table %s lacks column(s) %s that the origin has", casualdb.ErrSchemaMismatch, rel.Table, strings.Join(missing, ", "))
	}
	if !keysMatch || k != len(t.keys) {
		var keys []string
		for _, i := range rel.KeyColumns() {
			keys = append(keys, rel.Columns[i].Name)
		}
		return fmt.Errorf("%w: table %s: primary key (%s) here, (%s) at the origin", casualdb.ErrSchemaMismatch, rel.Table, strings.Join(t.keys, ", "), strings.Join(keys, ", "))
	}
	return nil
}

// keyMatch returns "(k1, k2) = (CAST($n AS t1), ...)" for the key columns,
// with parameters starting at n.
func (t *localTable) keyMatch(n int) string {
	var l, r []string
	for i, k := range t.keys {
		l = append(l, pgx.Identifier{k}.Sanitize())
		r = append(r, fmt.Sprintf("CAST($%d::text AS %s)", n+i, t.keyTyp[i]))
	}
	return "(" + strings.Join(l, ", ") + ") = (" + strings.Join(r, ", ") + ")"
}

func keyArgs(key []string) []any {
	args := make([]any, len(key))
	for i, k := range key {
		args[i] = k
	}
	return args
}

// keyText is the select list that renders the key columns as text.
func (t *localTable) keyText() string {
	var parts []string
	for _, k := range t.keys {
		// The type's output function, as pgoutput ships key values: a cast
		// to text differs for some types (bool gives "true", not "t";
		// char(n) loses its padding; inet gains a /32).
		parts = append(parts, "format('%s', "+pgx.Identifier{k}.Sanitize()+")")
	}
	return strings.Join(parts, ", ")
}

// tableRecheck is how long a table's local description is trusted: a
// trigger or column added since shows up within it.
const tableRecheck = 30 * time.Second

// table returns the local description of rel's table, cached.
func (a *Applier) table(ctx context.Context, rel casualdb.Relation) (*localTable, error) {
	// A cached table was allowed when it was described (the same schema
	// and name: a joined name may be read two ways).
	ident := pgx.Identifier{rel.Schema, rel.Name}.Sanitize()
	if lt, ok := a.tables[rel.Table]; ok && time.Since(lt.described) < tableRecheck && lt.ident == ident {
		if err := lt.check(rel); err == nil {
			return lt, nil
		}
	}
	if err := a.allowed(ctx, rel); err != nil {
		delete(a.tables, rel.Table)
		return nil, err
	}
	lt, err := describeLocal(ctx, a.main, rel)
	if err != nil {
		delete(a.tables, rel.Table)
		return nil, err
	}
	a.tables[rel.Table] = lt
	return lt, nil
}

// TableID names a table by schema and name (never by the joined name, which
// is ambiguous when a name holds a dot).
type TableID struct{ Schema, Name string }

// allowed tells whether apply may write rel's table: one of cfg.Tables, or
// a partition of one (pgoutput names the partition a row went to).
func (a *Applier) allowed(ctx context.Context, rel casualdb.Relation) error {
	if a.cfg.Tables == nil {
		return nil
	}
	id := TableID{rel.Schema, rel.Name}
	if slices.Contains(a.cfg.Tables, id) {
		return nil
	}
	var root TableID
	err := a.main.QueryRow(ctx, `
		SELECT rn.nspname::text, r.relname::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_class r ON r.oid = pg_partition_root(c.oid) JOIN pg_namespace rn ON rn.oid = r.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relispartition`, rel.Schema, rel.Name).Scan(&root.Schema, &root.Name)
	switch {
	case err == nil && slices.Contains(a.cfg.Tables, root):
		return nil
	case err != nil && !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("apply: is %s a partition of a replicated table: %w", rel.Table, err)
	}
	return fmt.Errorf("%w: %s is not a replicated table at this site (database.tables): its changes are never applied", casualdb.ErrSchemaMismatch, rel.Table)
}
