package meta

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNotInstalled reports a database without the casualdb schema (or
// without the table read): the sidecar has not run against it yet. The
// functions that read for an operator (FindParked, LockParked,
// DeleteParked, FindConflicts) wrap it.
var ErrNotInstalled = errors.New("casualdb schema not installed")

// notInstalled wraps ErrNotInstalled around err when PostgreSQL reports an
// undefined table.
func notInstalled(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table
		return fmt.Errorf("%w: %w", ErrNotInstalled, err)
	}
	return err
}

// Parked is a change, or a whole message, that could not be applied. It
// keeps everything needed to replay it.
type Parked struct {
	ID       int64
	ParkedAt time.Time
	Origin   casualdb.SiteID
	Seq      uint64
	LSN      uint64
	Table    string
	Key      string
	Reason   string
	Payload  []byte // a ParkedChange or a RemovedRow (JSON), or the raw message
}

// storable makes s text PostgreSQL stores: what is parked often quotes a
// peer's bytes (an origin name, a table name), and a NUL or a byte that is
// not UTF-8 would make the insert fail, and with it apply, message after
// message. NUL becomes \x00, invalid UTF-8 U+FFFD; the payload keeps the
// bytes as they came.
func storable(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", `\x00`)
}

// Park records p.
func Park(ctx context.Context, q Querier, p Parked) error {
	var lsn *string
	if p.LSN != 0 {
		s := casualdb.FormatLSN(p.LSN)
		lsn = &s
	}
	_, err := q.Exec(ctx, `INSERT INTO casualdb.parked (origin, seq, lsn, tbl, key, reason, payload) VALUES ($1, $2, $3::pg_lsn, $4, $5, $6, $7)`,
		storable(string(p.Origin)), int64(p.Seq), lsn, storable(p.Table), storable(p.Key), storable(p.Reason), p.Payload)
	if err != nil {
		return fmt.Errorf("park change of %s %s: %w", p.Table, p.Key, err)
	}
	return nil
}

// ParkedFilter selects parked entries for FindParked.
type ParkedFilter struct {
	Table string // CasualDB table name (schema.name); empty: every entry, those without a table included
	Limit int    // at most this many, the newest; zero: no limit
}

// parkedSelect reads the columns scanParked expects. The payload stays NULL
// (nil) when it is: a message parked without a body.
const parkedSelect = `SELECT id, parked_at, coalesce(origin,''), coalesce(seq,0), coalesce(lsn::text,'0/0'),
	coalesce(tbl,''), coalesce(key,''), reason, payload FROM casualdb.parked`

func scanParked(rows pgx.Rows) (Parked, error) {
	var (
		p      Parked
		origin string
		seq    int64
		lsn    string
	)
	if err := rows.Scan(&p.ID, &p.ParkedAt, &origin, &seq, &lsn, &p.Table, &p.Key, &p.Reason, &p.Payload); err != nil {
		return Parked{}, err
	}
	p.Origin, p.Seq = casualdb.SiteID(origin), uint64(seq)
	p.LSN, _ = casualdb.ParseLSN(lsn)
	return p, nil
}

func collectParked(rows pgx.Rows, what string) ([]Parked, error) {
	defer rows.Close()
	out := []Parked{}
	for rows.Next() {
		p, err := scanParked(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, notInstalled(err))
	}
	return out, nil
}

// FindParked returns the parked entries f selects, newest first (by the
// time they were parked, then by id).
func FindParked(ctx context.Context, q Querier, f ParkedFilter) ([]Parked, error) {
	var where []string
	var args []any
	if f.Table != "" {
		args = append(args, f.Table)
		where = append(where, fmt.Sprintf("tbl = $%d", len(args)))
	}
	sql := parkedSelect
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY parked_at DESC, id DESC"
	if f.Limit > 0 {
		args = append(args, f.Limit)
		sql += fmt.Sprintf(" LIMIT $%d", len(args))
	}
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list parked: %w", notInstalled(err))
	}
	return collectParked(rows, "list parked")
}

// LockParked reads the parked entry id and locks it (FOR UPDATE) until the
// end of q's transaction, so that two replays of one entry cannot both
// write it. ok is false when there is no such entry (any more).
func LockParked(ctx context.Context, q Querier, id int64) (p Parked, ok bool, err error) {
	rows, err := q.Query(ctx, parkedSelect+" WHERE id = $1 FOR UPDATE", id)
	if err != nil {
		return Parked{}, false, fmt.Errorf("read parked %d: %w", id, notInstalled(err))
	}
	list, err := collectParked(rows, fmt.Sprintf("read parked %d", id))
	if err != nil || len(list) == 0 {
		return Parked{}, false, err
	}
	return list[0], true, nil
}

// DeleteParked deletes the parked entries ids and returns the ids it
// deleted, in ascending order: those of ids that existed.
func DeleteParked(ctx context.Context, q Querier, ids []int64) ([]int64, error) {
	rows, err := q.Query(ctx, `WITH d AS (DELETE FROM casualdb.parked WHERE id = ANY($1) RETURNING id) SELECT id FROM d ORDER BY id`, ids)
	if err != nil {
		return nil, fmt.Errorf("delete parked: %w", notInstalled(err))
	}
	deleted, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("delete parked: %w", notInstalled(err))
	}
	return deleted, nil
}
