package meta

import (
	"context"
	"fmt"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
)

// A truncation marker says: every version of a row of the table older than
// the marker is deleted. A TRUNCATE writes no per-row records in the WAL, so
// the marker stands in for the tombstones of every row the table held.

// truncateDDL creates the markers' table (Install runs it; see schema).
const truncateDDL = `CREATE TABLE IF NOT EXISTS casualdb.truncation (
	tbl         text   PRIMARY KEY,
	hlc_wall    bigint NOT NULL,
	hlc_logical bigint NOT NULL,
	origin      text   NOT NULL)`

// LoadTruncations returns the truncation marker of every table that has one.
func LoadTruncations(ctx context.Context, q Querier) (map[string]casualdb.Version, error) {
	rows, err := q.Query(ctx, TruncationsQuery)
	if err != nil {
		return nil, fmt.Errorf("load truncations: %w", err)
	}
	return ScanTruncations(rows)
}

// TruncationsQuery is the query LoadTruncations runs, for callers that send
// it in a batch and read it with ScanTruncations.
const TruncationsQuery = `SELECT tbl, hlc_wall, hlc_logical, origin FROM casualdb.truncation`

// ScanTruncations reads (and closes) the rows of TruncationsQuery.
func ScanTruncations(rows pgx.Rows) (map[string]casualdb.Version, error) {
	defer rows.Close()
	out := map[string]casualdb.Version{}
	for rows.Next() {
		var (
			tbl, origin string
			v           casualdb.Version
			logical     int64
		)
		if err := rows.Scan(&tbl, &v.HLC.Wall, &logical, &origin); err != nil {
			return nil, fmt.Errorf("load truncations: %w", err)
		}
		v.HLC.Logical, v.Origin = uint32(logical), casualdb.SiteID(origin)
		out[tbl] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load truncations: %w", err)
	}
	return out, nil
}

// SaveTruncation raises the marker of tbl to v (it never goes down) and drops
// the row versions the marker supersedes, keeping what they knew in the
// table's collected floor.
func SaveTruncation(ctx context.Context, q Execer, tbl string, v casualdb.Version) error {
	_, err := q.Exec(ctx, `
		INSERT INTO casualdb.truncation AS t (tbl, hlc_wall, hlc_logical, origin) VALUES ($1, $2, $3, $4)
		ON CONFLICT (tbl) DO UPDATE SET hlc_wall = excluded.hlc_wall, hlc_logical = excluded.hlc_logical, origin = excluded.origin
		WHERE (t.hlc_wall, t.hlc_logical, t.origin) < (excluded.hlc_wall, excluded.hlc_logical, excluded.origin)`,
		tbl, v.HLC.Wall, int64(v.HLC.Logical), string(v.Origin))
	if err != nil {
		return fmt.Errorf("save truncation of %s: %w", tbl, err)
	}
	// What the removed versions knew goes into the table's collected
	// floor, in the same statement (see floor.go).
	_, err = q.Exec(ctx, `WITH gone AS (
		DELETE FROM casualdb.row_version WHERE tbl = $1 AND (hlc_wall, hlc_logical, origin) < ($2, $3, $4)
		RETURNING tbl, hlc_wall, hlc_logical, vclock, floor),`+floorCTEs+`
		SELECT count(*) FROM raised`,
		tbl, v.HLC.Wall, int64(v.HLC.Logical), string(v.Origin))
	if err != nil {
		return fmt.Errorf("drop versions truncated from %s: %w", tbl, err)
	}
	return nil
}

// MaxHLC returns the greatest HLC recorded for any row of tbl, its
// truncation marker or its collected floor (zero if none).
func MaxHLC(ctx context.Context, q Querier, tbl string) (casualdb.HLC, error) {
	var h casualdb.HLC
	var logical int64
	err := q.QueryRow(ctx, `SELECT coalesce(max(w), 0), coalesce((array_agg(l ORDER BY w DESC, l DESC))[1], 0) FROM (
		SELECT hlc_wall w, hlc_logical l FROM casualdb.row_version WHERE tbl = $1
		UNION ALL SELECT hlc_wall, hlc_logical FROM casualdb.truncation WHERE tbl = $1
		UNION ALL SELECT hlc_wall, hlc_logical FROM casualdb.collected_floor WHERE tbl = $1) s`, tbl).Scan(&h.Wall, &logical)
	if err != nil {
		return h, fmt.Errorf("max version of %s: %w", tbl, err)
	}
	h.Logical = uint32(logical)
	return h, nil
}
