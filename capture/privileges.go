package capture

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The sidecar runs as any role with these privileges (a superuser has them
// all); SetupRoleSQL grants them.
//
//   - REPLICATION: the slot and the replication connection;
//   - SET on session_replication_role (PostgreSQL 15: GRANT SET ON
//     PARAMETER): apply's sessions run as replica, so that the tables'
//     ordinary triggers and foreign keys do not fire twice;
//   - EXECUTE on the replication-origin functions: apply marks its writes
//     with the origin they came from;
//   - CREATE on the database: the casualdb schema (which the role owns: its
//     tables change with upgrades) and the publication;
//   - SELECT, INSERT, UPDATE, DELETE and TRUNCATE on every replicated table
//     and each of its partitions (apply writes a partition by its name);
//   - ownership of the publication; a table is added to it by its owner (or
//     a superuser: SetupRoleSQL does it).

// originFunctions are the replication-origin functions the sidecar calls,
// revoked from PUBLIC by PostgreSQL.
var originFunctions = []string{
	"pg_replication_origin_create(text)",
	"pg_replication_origin_drop(text)",
	"pg_replication_origin_session_setup(text)",
	"pg_replication_origin_session_reset()",
	"pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
}

// treeSQL lists table $1.$2 (schema, name) and, if it is partitioned,
// every partition below it: relid, level (pg_partition_tree lists nothing
// for a table that is not partitioned).
const treeSQL = `SELECT format('%I.%I', $1::text, $2::text)::regclass AS relid, 0 AS level
			UNION SELECT relid, level FROM pg_partition_tree(format('%I.%I', $1::text, $2::text)::regclass)`

// tablePrivileges are what the sidecar needs on a replicated table.
const tablePrivileges = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE"

const setupHint = "(`casualdb setup-role` prints the SQL that grants everything the sidecar needs)"

// roleProblems returns what the connected role lacks of the privileges the
// sidecar needs outside the replicated tables, each with the statement that
// grants it.
func roleProblems(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	var role string
	var super, repl, setRole, createDB, schemaExists, ownsSchema, ownsObjects bool
	err := conn.QueryRow(ctx, `
		SELECT current_user, r.rolsuper, r.rolreplication,
		       has_parameter_privilege('session_replication_role', 'SET'),
		       has_database_privilege(current_database(), 'CREATE'),
		       n.oid IS NOT NULL,
		       coalesce(pg_has_role(n.nspowner, 'USAGE'), false),
		       NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND NOT pg_has_role(c.relowner, 'USAGE'))
		FROM pg_roles r LEFT JOIN pg_namespace n ON n.nspname = 'casualdb'
		WHERE r.rolname = current_user`).Scan(&role, &super, &repl, &setRole, &createDB, &schemaExists, &ownsSchema, &ownsObjects)
	if err != nil {
		return nil, fmt.Errorf("read the sidecar role's privileges: %w", err)
	}
	if super {
		return nil, nil
	}
	r := pgx.Identifier{role}.Sanitize()
	var problems []string
	if !repl {
		problems = append(problems, fmt.Sprintf("role %s lacks REPLICATION (ALTER ROLE %s REPLICATION)", role, r))
	}
	if !setRole {
		problems = append(problems, fmt.Sprintf("role %s may not set session_replication_role (GRANT SET ON PARAMETER session_replication_role TO %s)", role, r))
	}
	for _, f := range originFunctions {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT has_function_privilege($1, 'EXECUTE')`, f).Scan(&ok); err != nil {
			return nil, fmt.Errorf("read the sidecar role's privileges on %s: %w", f, err)
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("role %s may not execute %s (GRANT EXECUTE ON FUNCTION %s TO %s)", role, f, f, r))
		}
	}
	switch {
	case !schemaExists && !createDB:
		problems = append(problems, fmt.Sprintf("role %s may not create schema casualdb (GRANT CREATE ON DATABASE %s TO %s)", role, currentDB(ctx, conn), r))
	case schemaExists && (!ownsSchema || !ownsObjects):
		problems = append(problems, fmt.Sprintf("schema casualdb or objects in it belong to another role than %s (an earlier sidecar ran as another role: run casualdb setup-role --apply as a superuser, which gives them to %s)", role, role))
	}
	return problems, nil
}

func currentDB(ctx context.Context, conn *pgx.Conn) string {
	var db string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		return "<database>"
	}
	return pgx.Identifier{db}.Sanitize()
}

// CheckTablePrivileges verifies that the connected role may read and write
// every one of tables and their partitions, and names each grant missing.
func CheckTablePrivileges(ctx context.Context, conn *pgx.Conn, tables []Table) error {
	var role string
	var problems []string
	for _, t := range tables {
		rows, err := conn.Query(ctx, `
			SELECT current_user, n.nspname, c.relname
			FROM (`+treeSQL+`) p
			JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE NOT (has_schema_privilege(c.relnamespace, 'USAGE') AND has_table_privilege(p.relid, 'SELECT') AND has_table_privilege(p.relid, 'INSERT')
			       AND has_table_privilege(p.relid, 'UPDATE') AND has_table_privilege(p.relid, 'DELETE')
			       AND has_table_privilege(p.relid, 'TRUNCATE'))
			ORDER BY p.level, 2, 3`, t.Schema, t.Name)
		if err != nil {
			return fmt.Errorf("read privileges on %s: %w", t, err)
		}
		for rows.Next() {
			var schema, name string
			if err := rows.Scan(&role, &schema, &name); err != nil {
				rows.Close()
				return fmt.Errorf("read privileges on %s: %w", t, err)
			}
			problems = append(problems, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s; GRANT %s ON TABLE %s TO %s", pgx.Identifier{schema}.Sanitize(), pgx.Identifier{role}.Sanitize(),
				tablePrivileges, pgx.Identifier{schema, name}.Sanitize(), pgx.Identifier{role}.Sanitize()))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read privileges on %s: %w", t, err)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: role %s may not write every replicated table: %s %s", casualdb.ErrDatabaseSetup, role, strings.Join(problems, "; "), setupHint)
	}
	return nil
}

// SetupRole is what SetupRoleSQL needs to know.
type SetupRole struct {
	Role        string  // the sidecar's role
	Publication string  // its publication
	Tables      []Table // the replicated tables (not the casualdb schema's)
	// FullIdentity are the tables the sidecar gives REPLICA IDENTITY FULL
	// (counters, merged columns, out-of-line values), which only their
	// owner may.
	FullIdentity []Table
}

// SetupRoleSQL returns the statements, to run as a superuser in the
// sidecar's database, that give role s.Role every privilege the sidecar
// needs and nothing more: the role itself (created with LOGIN if absent,
// without a password: set one, or use another authentication), the grants,
// the casualdb schema owned by it (with what an earlier sidecar made there,
// if it ran as another role), and the publication, owned by it, holding the
// tables (a table is added by its owner or a superuser). It reads the
// catalog (partitions, what exists) through conn and changes nothing.
func SetupRoleSQL(ctx context.Context, conn *pgx.Conn, s SetupRole) ([]string, error) {
	r := pgx.Identifier{s.Role}.Sanitize()
	var db string
	var roleExists, schemaExists, pubExists bool
	err := conn.QueryRow(ctx, `SELECT current_database(),
		EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1),
		EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'casualdb'),
		EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2)`, s.Role, s.Publication).Scan(&db, &roleExists, &schemaExists, &pubExists)
	if err != nil {
		return nil, fmt.Errorf("setup-role: read the catalog: %w", err)
	}
	var out []string
	if roleExists {
		out = append(out, fmt.Sprintf("ALTER ROLE %s LOGIN REPLICATION", r))
	} else {
		out = append(out, fmt.Sprintf("CREATE ROLE %s LOGIN REPLICATION", r))
	}
	out = append(out,
		fmt.Sprintf("GRANT CREATE, CONNECT ON DATABASE %s TO %s", pgx.Identifier{db}.Sanitize(), r),
		fmt.Sprintf("GRANT SET ON PARAMETER session_replication_role TO %s", r))
	for _, f := range originFunctions {
		out = append(out, fmt.Sprintf("GRANT EXECUTE ON FUNCTION %s TO %s", f, r))
	}
	if !schemaExists {
		out = append(out, fmt.Sprintf("CREATE SCHEMA casualdb AUTHORIZATION %s", r))
	} else {
		out = append(out, fmt.Sprintf("ALTER SCHEMA casualdb OWNER TO %s", r))
		objs, err := ownedElsewhere(ctx, conn, s.Role)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	schemas := map[string]bool{}
	for _, t := range s.Tables {
		rows, err := conn.Query(ctx, `SELECT n.nspname, c.relname FROM (`+treeSQL+`) p
			JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY p.level, 1, 2`, t.Schema, t.Name)
		if err != nil {
			return nil, fmt.Errorf("setup-role: partitions of %s: %w", t, err)
		}
		for rows.Next() {
			var schema, name string
			if err := rows.Scan(&schema, &name); err != nil {
				rows.Close()
				return nil, fmt.Errorf("setup-role: partitions of %s: %w", t, err)
			}
			if !schemas[schema] {
				schemas[schema] = true
				out = append(out, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", pgx.Identifier{schema}.Sanitize(), r))
			}
			out = append(out, fmt.Sprintf("GRANT %s ON TABLE %s TO %s", tablePrivileges, pgx.Identifier{schema, name}.Sanitize(), r))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("setup-role: partitions of %s: %w", t, err)
		}
	}
	for _, t := range s.FullIdentity {
		out = append(out, fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL", pgx.Identifier{t.Schema, t.Name}.Sanitize()))
	}
	pub := pgx.Identifier{s.Publication}.Sanitize()
	if !pubExists {
		out = append(out, "CREATE PUBLICATION "+pub)
	}
	out = append(out, fmt.Sprintf("ALTER PUBLICATION %s OWNER TO %s", pub, r))
	for _, t := range s.Tables {
		var in bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
			WHERE p.pubname = $1 AND pr.prrelid = format('%I.%I', $2::text, $3::text)::regclass)`, s.Publication, t.Schema, t.Name).Scan(&in)
		if err != nil {
			return nil, fmt.Errorf("setup-role: publication %s: %w", s.Publication, err)
		}
		if !in {
			out = append(out, fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pub, pgx.Identifier{t.Schema, t.Name}.Sanitize()))
		}
	}
	return out, nil
}

// ownedElsewhere returns the statements that give role what an earlier
// sidecar, running as another role, made in the casualdb schema.
func ownedElsewhere(ctx context.Context, conn *pgx.Conn, role string) ([]string, error) {
	rows, err := conn.Query(ctx, `
		SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END, c.relname
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'casualdb' AND c.relkind IN ('r', 'p', 'S', 'v') AND c.relowner IS DISTINCT FROM (SELECT oid FROM pg_roles WHERE rolname = $1)
		  -- a sequence that belongs to a table's column goes with the table
		  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
		                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
		UNION ALL
		SELECT 'FUNCTION', format('%s(%s)', quote_ident(p.proname), pg_get_function_identity_arguments(p.oid))
		FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'casualdb' AND p.proowner IS DISTINCT FROM (SELECT oid FROM pg_roles WHERE rolname = $1)
		ORDER BY 1, 2`, role)
	if err != nil {
		return nil, fmt.Errorf("setup-role: objects of schema casualdb: %w", err)
	}
	defer rows.Close()
	var out []string
	r := pgx.Identifier{role}.Sanitize()
	for rows.Next() {
		var kind, name string
		if err := rows.Scan(&kind, &name); err != nil {
			return nil, fmt.Errorf("setup-role: objects of schema casualdb: %w", err)
		}
		if kind != "FUNCTION" {
			name = pgx.Identifier{name}.Sanitize()
		}
		out = append(out, fmt.Sprintf("ALTER %s casualdb.%s OWNER TO %s", kind, name, r))
	}
	return out, rows.Err()
}

// isPrivilegeError tells whether err is PostgreSQL refusing for want of a
// privilege or ownership (SQLSTATE 42501).
func isPrivilegeError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501"
}

// NeedsFullIdentity tells whether the sidecar would give table t REPLICA
// IDENTITY FULL: it has not, and it has counters or merged columns (always),
// or, with toast, a column that may be stored out of line.
func NeedsFullIdentity(ctx context.Context, conn *pgx.Conn, t Table, always, toast bool) (bool, error) {
	var ident string
	var toastable bool
	err := conn.QueryRow(ctx, `
		SELECT c.relreplident::text,
		       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
		               AND NOT a.attisdropped AND a.attstorage IN ('x', 'e'))
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Name).Scan(&ident, &toastable)
	if err != nil {
		return false, fmt.Errorf("replica identity of %s: %w", t, err)
	}
	return ident != "f" && (always || (toast && toastable)), nil
}
