package apply

import (
	"context"
	"fmt"
	"slices"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// Table is a table as this site's catalog describes it. Apply writes
// through it (describeLocal); `casualdb parked replay` writes a parked
// change through it too, so that both cast values to the same local types.
type Table struct {
	Schema, Name string
	// Kind is pg_class.relkind: "r" for a table, "p" for a partitioned
	// table, other kinds for relations that are not tables (IsTable).
	Kind    string
	Columns []Column // in the table's order (attnum)
	Keys    []string // the primary-key columns in key order; none without a primary key
}

// Column is a column of a Table.
type Column struct {
	Name           string
	Type           string // as format_type renders it, with its modifier: "numeric(12,2)"
	Generated      bool   // GENERATED ALWAYS AS (...) STORED: computed, never written
	IdentityAlways bool   // GENERATED ALWAYS AS IDENTITY: written only with OVERRIDING SYSTEM VALUE
	Key            bool   // in the primary key
}

// String returns the CasualDB name of t: schema.name, unquoted.
func (t *Table) String() string { return casualdb.TableName(t.Schema, t.Name) }

// Ident returns t's name quoted for SQL.
func (t *Table) Ident() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// IsTable tells whether t is a table (plain or partitioned), not a view or
// another kind of relation.
func (t *Table) IsTable() bool { return t.Kind == "r" || t.Kind == "p" }

// Column returns the column name of t.
func (t *Table) Column(name string) (Column, bool) {
	for _, c := range t.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

// DescribeTable reads the columns and primary key of the relation
// schema.name from the catalog. A relation that does not exist is
// casualdb.ErrSchemaMismatch.
func DescribeTable(ctx context.Context, q meta.Querier, schema, name string) (*Table, error) {
	t := &Table{Schema: schema, Name: name}
	rows, err := q.Query(ctx, `
		SELECT c.relkind::text, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', a.attidentity = 'a',
		       coalesce((SELECT k.n FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, n) WHERE k.att = a.attnum), 0)::int
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, schema, name)
	if err != nil {
		return nil, fmt.Errorf("describe local table %s: %w", t, err)
	}
	defer rows.Close()
	keyPos := map[string]int{}
	for rows.Next() {
		var c Column
		var pos int
		if err := rows.Scan(&t.Kind, &c.Name, &c.Type, &c.Generated, &c.IdentityAlways, &pos); err != nil {
			return nil, fmt.Errorf("describe local table %s: %w", t, err)
		}
		if c.Key = pos > 0; c.Key {
			keyPos[c.Name] = pos
			t.Keys = append(t.Keys, c.Name)
		}
		t.Columns = append(t.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("describe local table %s: %w", t, err)
	}
	if len(t.Columns) == 0 {
		return nil, fmt.Errorf("%w: table %s does not exist here", casualdb.ErrSchemaMismatch, t)
	}
	slices.SortFunc(t.Keys, func(a, b string) int { return keyPos[a] - keyPos[b] })
	return t, nil
}

// FindTable finds and describes the table (plain or partitioned) that a
// CasualDB table name (schema.name, unquoted, as casualdb.TableName
// writes it) names: a dot in the schema or the table name makes the split
// ambiguous, so it is the catalog that tells.
func FindTable(ctx context.Context, q meta.Querier, table string) (*Table, error) {
	rows, err := q.Query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname || '.' || c.relname = $1 AND c.relkind IN ('r', 'p')`, table)
	if err != nil {
		return nil, fmt.Errorf("find table %s: %w", table, err)
	}
	type sn struct{ Schema, Name string }
	found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[sn])
	if err != nil {
		return nil, fmt.Errorf("find table %s: %w", table, err)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: table %s does not exist here", casualdb.ErrSchemaMismatch, table)
	case 1:
		return DescribeTable(ctx, q, found[0].Schema, found[0].Name)
	}
	return nil, fmt.Errorf("table name %s is ambiguous here (%d tables)", table, len(found))
}
