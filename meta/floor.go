package meta

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
)

// A table's collected floor is what the row versions removed from
// casualdb.row_version knew (by tombstone collection, or by a truncation
// marker): the greatest HLC and the join of their vector clocks and delete
// floors. Capture stamps a write to a row that has no recorded version from
// it (conflict.Start: above the HLC, and with this site's counter above any
// it gave the row before), so that a re-insert after a collection is the
// later, by last-writer-wins, than the tombstone other sites may still hold,
// and its clock reuses none of the row's old dots (see docs/architecture.md,
// "Collected floors"). It only grows.

// floorDDL creates the floors' table (Install runs it; see schema).
const floorDDL = `CREATE TABLE IF NOT EXISTS casualdb.collected_floor (
	tbl         text        PRIMARY KEY,
	hlc_wall    bigint      NOT NULL,
	hlc_logical bigint      NOT NULL,
	vclock      jsonb       NOT NULL,
	updated_at  timestamptz NOT NULL DEFAULT now())`

// FloorsQuery returns the collected floors of the tables in $1 (text[]),
// for callers that send it in a batch and read it with ScanFloors.
const FloorsQuery = `SELECT tbl, hlc_wall, hlc_logical, vclock FROM casualdb.collected_floor WHERE tbl = ANY($1::text[])`

// LoadFloors returns the collected floors of tables (those without one
// are absent from the map). A floor is a Version with an empty Origin.
func LoadFloors(ctx context.Context, q Querier, tables []string) (map[string]casualdb.Version, error) {
	rows, err := q.Query(ctx, FloorsQuery, tables)
	if err != nil {
		return nil, fmt.Errorf("load collected floors: %w", err)
	}
	return ScanFloors(rows)
}

// ScanFloors reads (and closes) the rows of FloorsQuery.
func ScanFloors(rows pgx.Rows) (map[string]casualdb.Version, error) {
	defer rows.Close()
	out := map[string]casualdb.Version{}
	for rows.Next() {
		var (
			tbl     string
			v       casualdb.Version
			logical int64
			vc      []byte
		)
		if err := rows.Scan(&tbl, &v.HLC.Wall, &logical, &vc); err != nil {
			return nil, fmt.Errorf("load collected floors: %w", err)
		}
		v.HLC.Logical = uint32(logical)
		if err := json.Unmarshal(vc, &v.VC); err != nil {
			return nil, fmt.Errorf("load collected floor of %s: vclock: %w", tbl, err)
		}
		out[tbl] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load collected floors: %w", err)
	}
	return out, nil
}

// floorCTEs are the common table expressions that raise the collected
// floors by the row versions in "gone" (tbl, hlc_wall, hlc_logical, vclock,
// floor), a data-modifying CTE the statement defines first: the floor's HLC
// becomes the greater of the recorded one and the greatest removed; its
// clock the pointwise maximum of the recorded one and of every removed
// version's clock and floor (the SQL of conflict.CollectFloor). "raised"
// counts the floors written.
const floorCTEs = `
	top AS (
		SELECT DISTINCT ON (tbl) tbl, hlc_wall, hlc_logical FROM gone
		ORDER BY tbl, hlc_wall DESC, hlc_logical DESC),
	clocks AS (
		SELECT tbl, jsonb_object_agg(site, n) AS vc FROM (
			SELECT g.tbl, e.key AS site, max(e.value::numeric) AS n
			FROM gone g CROSS JOIN LATERAL (
				SELECT key, value FROM jsonb_each_text(g.vclock)
				UNION ALL SELECT key, value FROM jsonb_each_text(coalesce(g.floor, '{}'::jsonb))) e
			GROUP BY g.tbl, e.key) s
		GROUP BY tbl),
	raised AS (
		INSERT INTO casualdb.collected_floor AS f (tbl, hlc_wall, hlc_logical, vclock)
		SELECT t.tbl, t.hlc_wall, t.hlc_logical, coalesce(c.vc, '{}'::jsonb) FROM top t LEFT JOIN clocks c USING (tbl)
		ON CONFLICT (tbl) DO UPDATE SET
			(hlc_wall, hlc_logical) = (SELECT w, l FROM (VALUES (f.hlc_wall, f.hlc_logical), (excluded.hlc_wall, excluded.hlc_logical)) h(w, l)
				ORDER BY w DESC, l DESC LIMIT 1),
			vclock = (SELECT coalesce(jsonb_object_agg(key, n), '{}'::jsonb) FROM (
				SELECT key, max(value::numeric) AS n FROM (
					SELECT key, value FROM jsonb_each_text(f.vclock)
					UNION ALL SELECT key, value FROM jsonb_each_text(excluded.vclock)) e
				GROUP BY key) s),
			updated_at = now()
		RETURNING 1)`

// collectSQL removes the tombstones chosen by the condition spliced in at
// %s (over row_version v) and raises their tables' collected floors in the
// same statement, so that no reader ever sees a tombstone gone and the floor
// not yet raised. It returns the number of tombstones removed.
const collectSQL = `
	WITH gone AS (
		DELETE FROM casualdb.row_version v WHERE %s
		RETURNING v.tbl, v.hlc_wall, v.hlc_logical, v.vclock, v.floor),` + floorCTEs + `
	SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM raised)`
