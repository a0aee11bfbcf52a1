package meta

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Schema is the name of CasualDB's schema in every site's database.
const Schema = "casualdb"

// Querier is what the functions of this package need: a *pgx.Conn, a
// pgx.Tx or a pool.
type Querier interface {
	Execer
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	_ Querier = (*pgx.Conn)(nil)
	_ Querier = pgx.Tx(nil)
)

// Execer runs statements without reading rows: a Querier, or a Batch that
// queues them to send in one round trip.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Batch queues statements (an Execer) to send together with
// Send: one round trip, and one implicit transaction unless the batch
// holds transaction control statements.
type Batch struct{ b pgx.Batch }

// Exec queues sql; the errors come from Send.
func (b *Batch) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	b.b.Queue(sql, args...)
	return pgconn.CommandTag{}, nil
}

// Len is the number of queued statements.
func (b *Batch) Len() int { return b.b.Len() }

// Send runs the queued statements on conn and returns the first error.
func (b *Batch) Send(ctx context.Context, conn *pgx.Conn) error {
	if b.b.Len() == 0 {
		return nil
	}
	return conn.SendBatch(ctx, &b.b).Close()
}

// ddl creates the schema and its core tables; every statement is idempotent
// so that a restart creates nothing twice.
var ddl = []string{
	`CREATE SCHEMA IF NOT EXISTS casualdb`,
	// One row per replicated row ever written: its current version, or its
	// tombstone. row_xmin is the xmin of the table row the version describes
	// (null for tombstones and when unknown): apply compares it with the
	// row's live xmin to tell whether a local write has not been captured yet.
	`CREATE TABLE IF NOT EXISTS casualdb.row_version (
		tbl         text        NOT NULL,
		key         text        NOT NULL,
		hlc_wall    bigint      NOT NULL,
		hlc_logical bigint      NOT NULL,
		origin      text        NOT NULL,
		vclock      jsonb       NOT NULL,
		deleted     boolean     NOT NULL DEFAULT false,
		row_xmin    bigint,
		updated_at  timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (tbl, key))`,
	// The join of the clocks of every delete of the row merged here: under
	// the delete-wins policy a write whose clock does not cover it is dead.
	`ALTER TABLE casualdb.row_version ADD COLUMN IF NOT EXISTS floor jsonb`,
	// The version of every column, for tables whose columns merge one by one.
	`ALTER TABLE casualdb.row_version ADD COLUMN IF NOT EXISTS col_versions jsonb`,
	// The commit LSN, at its origin, of the transaction that wrote the
	// recorded version: tombstone collection compares it with every site's
	// progress.
	`ALTER TABLE casualdb.row_version ADD COLUMN IF NOT EXISTS origin_lsn bigint`,
	// The claims of the row's columns in unique indexes other than the
	// primary key: per column, the stamp of the change that set its value
	// and a hash of the value (see casualdb.Claim). Null for rows recorded
	// before claims were kept.
	`ALTER TABLE casualdb.row_version ADD COLUMN IF NOT EXISTS claims jsonb`,
	// Per origin, the commit LSN of the last delete merged into floor
	// (RowVersion.FloorLSNs): tombstone collection requires each to be
	// stable. NULL with a floor: recorded before they were kept.
	`ALTER TABLE casualdb.row_version ADD COLUMN IF NOT EXISTS floor_lsns jsonb`,
	// Tombstone collection finds the deleted rows through this index. It is
	// on a column no write changes (and on deleted, which only deletes and
	// re-inserts change), so that every other update of a row's version is
	// a HOT update: no new index entries, less WAL. An index on origin and
	// origin_lsn, which change with every write, made none of them HOT.
	`DROP INDEX IF EXISTS casualdb.row_version_tombstones`,
	`CREATE INDEX IF NOT EXISTS row_version_deleted ON casualdb.row_version (tbl) WHERE deleted`,
	// Room on each page for the new version of a row (HOT updates stay on
	// the page).
	`ALTER TABLE casualdb.row_version SET (fillfactor = 80)`,
	// Each site's heartbeat: a row it updates now and then, replicated like
	// any other, so that its transactions (and the dependencies they carry:
	// what it has applied) keep reaching its peers when it writes nothing.
	`CREATE TABLE IF NOT EXISTS casualdb.heartbeat (
		site text PRIMARY KEY,
		beat bigint NOT NULL,
		at   timestamptz NOT NULL)`,
	// Per origin: the last transaction applied here, written in the apply
	// transaction itself (exactly once).
	`CREATE TABLE IF NOT EXISTS casualdb.progress (
		origin      text        PRIMARY KEY,
		seq         bigint      NOT NULL,
		lsn         pg_lsn      NOT NULL,
		commit_time timestamptz,
		applied_at  timestamptz NOT NULL DEFAULT now(),
		epoch       text        NOT NULL DEFAULT '')`,
	// The dependencies of the last transaction applied from the origin: what
	// the origin had applied from every other site when it committed it.
	`ALTER TABLE casualdb.progress ADD COLUMN IF NOT EXISTS deps jsonb`,
	// The outbox sequence up to which capture has written version metadata.
	`CREATE TABLE IF NOT EXISTS casualdb.capture_state (
		site        text        PRIMARY KEY,
		outbox_seq  bigint      NOT NULL,
		lsn         pg_lsn      NOT NULL,
		updated_at  timestamptz NOT NULL DEFAULT now())`,
	// The outbox message holding the transaction at outbox_seq (outbox
	// messages hold a batch of transactions each).
	`ALTER TABLE casualdb.capture_state ADD COLUMN IF NOT EXISTS outbox_msg bigint NOT NULL DEFAULT 0`,
	// Changes that could not be applied, with everything needed to replay them.
	`CREATE TABLE IF NOT EXISTS casualdb.parked (
		id          bigserial   PRIMARY KEY,
		parked_at   timestamptz NOT NULL DEFAULT now(),
		origin      text,
		seq         bigint,
		lsn         pg_lsn,
		tbl         text,
		key         text,
		reason      text        NOT NULL,
		payload     bytea)`,
	// Every true conflict (concurrent versions of one row) and how it was resolved.
	`CREATE TABLE IF NOT EXISTS casualdb.conflict_log (
		id             bigserial   PRIMARY KEY,
		logged_at      timestamptz NOT NULL DEFAULT now(),
		tbl            text        NOT NULL,
		key            text        NOT NULL,
		rule           text        NOT NULL,
		winner         text        NOT NULL,
		local_version  jsonb,
		remote_version jsonb,
		local_row      jsonb,
		remote_row     jsonb)`,
	`CREATE INDEX IF NOT EXISTS conflict_log_logged_at ON casualdb.conflict_log (logged_at)`,
	// Fails apply's transaction when n of its rows were written locally
	// meanwhile (what names the check): SQLSTATE 40001, which apply
	// retries.
	`CREATE OR REPLACE FUNCTION casualdb.expect_unraced(n bigint, what text) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		IF n > 0 THEN
			RAISE EXCEPTION 'casualdb: % row(s) %: written locally meanwhile', n, what USING ERRCODE = '40001';
		END IF;
	END $$`,
	`DROP FUNCTION IF EXISTS casualdb.expect_absent(bigint)`,
	`DROP FUNCTION IF EXISTS casualdb.expect_unchanged(bigint)`,
}

// schema lists what Install runs, in order: the core tables, then each
// concern's own statements (kept beside its queries). A file that adds
// tables adds its statements here: explicitly, never from an init().
var schema = [][]string{
	ddl,
	{truncateDDL},
	{floorDDL},
	durabilityDDL,
	hintExpiryDDL,
}

// Install creates CasualDB's schema and tables if they do not exist.
func Install(ctx context.Context, q Querier) error {
	for _, stmts := range schema {
		for _, s := range stmts {
			if _, err := q.Exec(ctx, s); err != nil {
				return fmt.Errorf("install casualdb schema: %w", err)
			}
		}
	}
	return nil
}

// Uninstall drops CasualDB's schema and everything in it.
func Uninstall(ctx context.Context, q Querier) error {
	if _, err := q.Exec(ctx, `DROP SCHEMA IF EXISTS casualdb CASCADE`); err != nil {
		return fmt.Errorf("drop casualdb schema: %w", err)
	}
	return nil
}
