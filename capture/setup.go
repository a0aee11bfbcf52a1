package capture

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
)

// Table is a replicated table.
type Table struct {
	Schema, Name string
}

// String returns the table's CasualDB name (schema.name).
func (t Table) String() string { return casualdb.TableName(t.Schema, t.Name) }

// ParseTable parses "name" (schema public) or "schema.name".
func ParseTable(s string) (Table, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Table{}, fmt.Errorf("%w: empty table name", casualdb.ErrConfig)
	}
	if schema, name, ok := strings.Cut(s, "."); ok {
		if schema == "" || name == "" {
			return Table{}, fmt.Errorf("%w: bad table name %q", casualdb.ErrConfig, s)
		}
		return Table{schema, name}, nil
	}
	return Table{"public", s}, nil
}

// CheckSettings verifies that the server can serve logical replication and
// says exactly what to change when it cannot.
func CheckSettings(ctx context.Context, conn *pgx.Conn) error {
	var walLevel, slots, senders, version string
	err := conn.QueryRow(ctx, `SELECT current_setting('wal_level'), current_setting('max_replication_slots'),
		current_setting('max_wal_senders'), current_setting('server_version_num')`).Scan(&walLevel, &slots, &senders, &version)
	if err != nil {
		return fmt.Errorf("read server settings: %w", err)
	}
	var problems []string
	if walLevel != "logical" {
		problems = append(problems, fmt.Sprintf("wal_level is %q, CasualDB needs 'logical': run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL", walLevel))
	}
	if n, _ := strconv.Atoi(slots); n < 1 {
		problems = append(problems, "max_replication_slots is 0: run ALTER SYSTEM SET max_replication_slots = 10; and restart PostgreSQL")
	}
	if n, _ := strconv.Atoi(senders); n < 1 {
		problems = append(problems, "max_wal_senders is 0: run ALTER SYSTEM SET max_wal_senders = 10; and restart PostgreSQL")
	}
	if n, _ := strconv.Atoi(version); n < 150000 {
		problems = append(problems, fmt.Sprintf("server version %s: CasualDB needs PostgreSQL 15 or newer", version))
	}
	var more []string
	if n, _ := strconv.Atoi(version); n >= 150000 {
		// has_parameter_privilege, and GRANT SET ON PARAMETER, are 15's.
		if more, err = roleProblems(ctx, conn); err != nil {
			return err
		}
	}
	if len(more) > 0 {
		problems = append(problems, more...)
		problems[len(problems)-1] += " " + setupHint
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", casualdb.ErrDatabaseSetup, strings.Join(problems, "; "))
	}
	return nil
}

// ResolveTables returns the tables to replicate: the named ones, each of
// which must exist and have a primary key, or, when none are named, every
// table of schema public that has a primary key (tables without one are
// logged and left out: a publication with such a table would make UPDATE and
// DELETE on it fail at the origin).
func ResolveTables(ctx context.Context, conn *pgx.Conn, named []string, log *slog.Logger) ([]Table, error) {
	if len(named) == 0 {
		rows, err := conn.Query(ctx, `
			SELECT n.nspname, c.relname, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
			ORDER BY 1, 2`)
		if err != nil {
			return nil, fmt.Errorf("list tables of schema public: %w", err)
		}
		var out []Table
		for rows.Next() {
			var t Table
			var pk bool
			if err := rows.Scan(&t.Schema, &t.Name, &pk); err != nil {
				rows.Close()
				return nil, fmt.Errorf("list tables: %w", err)
			}
			if !pk {
				log.Warn("table has no primary key; not replicated", "table", t.String())
				continue
			}
			out = append(out, t)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("list tables: %w", err)
		}
		return out, nil
	}
	var out []Table
	seen := map[Table]bool{}
	for _, s := range named {
		t, err := ParseTable(s)
		if err != nil {
			return nil, err
		}
		if seen[t] {
			continue
		}
		seen[t] = true
		var exists, pk bool
		err = conn.QueryRow(ctx, `
			SELECT true, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, t.Schema, t.Name).Scan(&exists, &pk)
		if err != nil && err != pgx.ErrNoRows {
			return nil, fmt.Errorf("look up table %s: %w", t, err)
		}
		if !exists {
			return nil, fmt.Errorf("%w: replicated table %s does not exist", casualdb.ErrConfig, t)
		}
		if !pk {
			return nil, fmt.Errorf("%w: replicated table %s: add a primary key or leave the table out of 'tables'", casualdb.ErrNoPrimaryKey, t)
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, nil
}

// EnsurePublication creates the publication over tables, or adds and drops
// tables until it holds exactly tables. A role that is not a superuser may
// add only tables it owns: the error for another names the statement to run
// as a superuser (casualdb setup-role adds them).
func EnsurePublication(ctx context.Context, conn *pgx.Conn, name string, tables []Table) error {
	pub := pgx.Identifier{name}.Sanitize()
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("look up publication %s: %w", name, err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE PUBLICATION "+pub); err != nil {
			return fmt.Errorf("%w: create publication %s: %v %s", casualdb.ErrDatabaseSetup, name, err, setupHint)
		}
	}
	rows, err := conn.Query(ctx, `SELECT n.nspname, c.relname FROM pg_publication_rel pr
		JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = $1`, name)
	if err != nil {
		return fmt.Errorf("list tables of publication %s: %w", name, err)
	}
	has := map[Table]bool{}
	for rows.Next() {
		var t Table
		if err := rows.Scan(&t.Schema, &t.Name); err != nil {
			rows.Close()
			return fmt.Errorf("list tables of publication %s: %w", name, err)
		}
		has[t] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list tables of publication %s: %w", name, err)
	}
	want := map[Table]bool{}
	for _, t := range tables {
		want[t] = true
		if has[t] {
			continue
		}
		ident := pgx.Identifier{t.Schema, t.Name}.Sanitize()
		if _, err := conn.Exec(ctx, "ALTER PUBLICATION "+pub+" ADD TABLE "+ident); err != nil {
			if isPrivilegeError(err) {
				return fmt.Errorf("%w: publication %s: only a superuser, or the owner of both the publication and table %s, may add it (ALTER PUBLICATION %s ADD TABLE %s) %s: %v",
					casualdb.ErrDatabaseSetup, name, t, pub, ident, setupHint, err)
			}
			return fmt.Errorf("prepare publication %s: add %s: %w", name, t, err)
		}
	}
	for t := range has {
		if want[t] {
			continue
		}
		if _, err := conn.Exec(ctx, "ALTER PUBLICATION "+pub+" DROP TABLE "+pgx.Identifier{t.Schema, t.Name}.Sanitize()); err != nil {
			return fmt.Errorf("prepare publication %s: drop %s: %w", name, t, err)
		}
	}
	return nil
}

// EnsureSlot creates the logical replication slot (pgoutput) if it does not exist.
func EnsureSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	var exists bool
	var plugin string
	err := conn.QueryRow(ctx, `SELECT true, coalesce(plugin, '') FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&exists, &plugin)
	if err != nil && err != pgx.ErrNoRows {
		return fmt.Errorf("look up slot %s: %w", slot, err)
	}
	if exists {
		if plugin != "pgoutput" {
			return fmt.Errorf("%w: replication slot %s exists with plugin %q, not pgoutput: drop it or name another slot", casualdb.ErrDatabaseSetup, slot, plugin)
		}
		return nil
	}
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
		return fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	return nil
}

// Uninstall drops the slot and the publication (if present).
func Uninstall(ctx context.Context, conn *pgx.Conn, slot, publication string) error {
	var active bool
	err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
	switch {
	case err == pgx.ErrNoRows:
	case err != nil:
		return fmt.Errorf("look up slot %s: %w", slot, err)
	case active:
		return fmt.Errorf("drop slot %s: it is in use; stop the sidecar first", slot)
	default:
		if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
			return fmt.Errorf("drop slot %s: %w", slot, err)
		}
	}
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{publication}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %s: %w", publication, err)
	}
	return nil
}

// SlotLag returns how many bytes of WAL the slot keeps (current WAL position
// minus the slot's restart LSN); -1 if the slot does not exist.
func SlotLag(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, slot string) (int64, error) {
	var lag int64
	err := q.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&lag)
	if err == pgx.ErrNoRows {
		return -1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read lag of slot %s: %w", slot, err)
	}
	return lag, nil
}

// EnsureCounters checks that the counter columns of table (none: a table
// whose columns merge one by one) exist and are integers or numeric, and
// gives the table REPLICA IDENTITY FULL (so that an update's old values, and
// with them its increments and the columns it wrote, are in the WAL),
// saying so in the log when it changes it.
func EnsureCounters(ctx context.Context, conn *pgx.Conn, table string, cols []string, log *slog.Logger) error {
	t, err := ParseTable(table)
	if err != nil {
		return err
	}
	var ident string
	var types []string
	err = conn.QueryRow(ctx, `
		SELECT c.relreplident::text,
		       array(SELECT coalesce((SELECT format_type(a.atttypid, NULL) FROM pg_attribute a
		                              WHERE a.attrelid = c.oid AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped), '')
		             FROM unnest($3::text[]) WITH ORDINALITY AS u(col, n) ORDER BY n)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name, cols).Scan(&ident, &types)
	if err != nil {
		return fmt.Errorf("%w: counters of %s: %v", casualdb.ErrDatabaseSetup, table, err)
	}
	for i, col := range cols {
		switch types[i] {
		case "smallint", "integer", "bigint", "numeric":
		case "":
			return fmt.Errorf("%w: conflicts.tables.%s.counters: %s has no column %q", casualdb.ErrConfig, table, table, col)
		default:
			return fmt.Errorf("%w: conflicts.tables.%s.counters: column %s is %s; a counter must be smallint, integer, bigint or numeric", casualdb.ErrConfig, table, col, types[i])
		}
	}
	if ident != "f" {
		return setFullIdentity(ctx, conn, t, "its counter or column-merged columns", log)
	}
	return nil
}

// EnsureToastIdentity gives table REPLICA IDENTITY FULL when it has a column
// that PostgreSQL may store out of line (TOAST), so that an update which
// leaves such a value unchanged still ships it (from the old row): without
// it, a peer where that update wins over a concurrent one cannot know the
// value and must park the change.
func EnsureToastIdentity(ctx context.Context, conn *pgx.Conn, t Table, log *slog.Logger) error {
	need, err := NeedsFullIdentity(ctx, conn, t, false, true)
	if err != nil {
		return fmt.Errorf("%w: %v", casualdb.ErrDatabaseSetup, err)
	}
	if !need {
		return nil
	}
	return setFullIdentity(ctx, conn, t, "columns that may be stored out of line", log)
}

func setFullIdentity(ctx context.Context, conn *pgx.Conn, t Table, why string, log *slog.Logger) error {
	if _, err := conn.Exec(ctx, "ALTER TABLE "+pgx.Identifier{t.Schema, t.Name}.Sanitize()+" REPLICA IDENTITY FULL"); err != nil {
		return fmt.Errorf("%w: set REPLICA IDENTITY FULL on %s (needed for %s; only its owner may) %s: %v", casualdb.ErrDatabaseSetup, t, why, setupHint, err)
	}
	log.Info("set REPLICA IDENTITY FULL so that updates carry their old values", "table", t.String(), "for", why)
	return nil
}
