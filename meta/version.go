package meta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
)

// RowKey names one replicated row: its table and canonical key.
type RowKey struct {
	Table string
	Key   string // casualdb.KeyString of the primary key
}

// RowVersion is the recorded state of one row.
type RowVersion struct {
	Version casualdb.Version
	Deleted bool
	// Xmin is the xmin of the table row this version describes; 0 when
	// unknown or for tombstones.
	Xmin uint32
	// Floor is the join of the clocks of every delete of the row merged
	// here (see conflict.Row); nil when it was never deleted.
	Floor casualdb.VectorClock
	// Columns is the version of every column, for tables whose columns
	// merge one by one; nil otherwise.
	Columns map[string]casualdb.Stamp
	// Claims is the claim of every column of the row's unique indexes other
	// than the primary key (see casualdb.Change.Claims); nil for tables
	// without such indexes and for rows recorded before claims were kept.
	Claims map[string]casualdb.Claim
	// OriginLSN is the commit LSN, at Version.Origin, of the transaction
	// that wrote Version; 0 when unknown.
	OriginLSN uint64
	// FloorLSNs name the deletes merged into Floor: per origin, the commit
	// LSN there of the last of them (its earlier ones came before it).
	// Tombstone collection requires every one to be stable, and apply
	// tells by them whether a write whose clock does not cover Floor saw
	// those deletes all the same (conflict.SawDeletes). A writer gives the
	// entries it knows (at least the delete it merges); the recorded ones
	// are joined with them. nil with a Floor (recorded before they were
	// kept): unknown.
	FloorLSNs map[casualdb.SiteID]uint64
}

// KeyLookupParams are the planner settings of the sessions that look rows up
// by lists of keys (apply's, capture's versioner): their statements join an
// array of a few to a few thousand keys to a table by its primary key, and
// with an array of a few hundred the planner chose hash joins over
// sequential scans of the whole table (casualdb.row_version included): ten
// times slower than probing the index per key, and slower still as tables
// grow. Without hash and merge joins it probes the index. Sequential scans
// are off too: a site's sessions prepare their lookups while its tables are
// empty, and a plan kept from then (the plan cache reuses one generic plan)
// scanned the whole of a table that had grown to tens of thousands of rows
// for every key, until an ANALYZE invalidated it (on fresh sites, 40 s of a
// 46 s benchmark run went into that one statement). A table without a
// usable index is still scanned. Triggers that fire in apply's sessions
// (ENABLE REPLICA or ALWAYS) plan with these settings too.
var KeyLookupParams = map[string]string{
	"enable_hashjoin":  "off",
	"enable_mergejoin": "off",
	"enable_seqscan":   "off",
}

// LoadVersions returns the recorded versions of keys; keys without a record
// are absent from the map.
func LoadVersions(ctx context.Context, q Querier, keys []RowKey) (map[RowKey]RowVersion, error) {
	if len(keys) == 0 {
		return map[RowKey]RowVersion{}, nil
	}
	sql, args := VersionsQuery(keys)
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("load row versions: %w", err)
	}
	return ScanVersions(rows, len(keys))
}

// VersionsQuery is the query LoadVersions runs, for callers that send it in
// a batch and read it with ScanVersions. Each key is looked up on its own
// (a lateral subquery) so that the plan probes the primary key even when
// it was made while the table was empty: see KeyLookupParams.
func VersionsQuery(keys []RowKey) (string, []any) {
	tbls := make([]string, len(keys))
	ks := make([]string, len(keys))
	for i, k := range keys {
		tbls[i], ks[i] = k.Table, k.Key
	}
	return `
		SELECT v.tbl, v.key, v.hlc_wall, v.hlc_logical, v.origin, v.vclock, v.deleted, coalesce(v.row_xmin, 0), v.floor, v.col_versions, coalesce(v.origin_lsn, 0), v.claims, v.floor_lsns
		FROM unnest($1::text[], $2::text[]) AS k(tbl, key)
		CROSS JOIN LATERAL (SELECT * FROM casualdb.row_version r WHERE r.tbl = k.tbl AND r.key = k.key LIMIT 1) v`, []any{tbls, ks}
}

// UnchangedCheckSQL fails the transaction (SQLSTATE 40001) unless every key
// ($1 tables, $2 keys) has the recorded version given ($3 wall, $4 logical,
// $5 origin, $6 vector clock), or none where the clock is null. Equality is
// that of apply's sameVersion: the stamp and the clock.
const UnchangedCheckSQL = `
		SELECT casualdb.expect_unraced(count(*), 'apply decided against another version of')
		FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[]) AS e(tbl, key, wall, logical, origin, vc)
		LEFT JOIN LATERAL (SELECT r.hlc_wall, r.hlc_logical, r.origin, r.vclock FROM casualdb.row_version r
			WHERE r.tbl = e.tbl AND r.key = e.key LIMIT 1) r ON true
		WHERE CASE WHEN e.vc IS NULL THEN r.hlc_wall IS NOT NULL
			ELSE r.hlc_wall IS NULL OR (r.hlc_wall, r.hlc_logical, r.origin, r.vclock) IS DISTINCT FROM (e.wall, e.logical, e.origin, e.vc::jsonb) END`

// ScanVersions reads (and closes) the rows of VersionsQuery.
func ScanVersions(rows pgx.Rows, hint int) (map[RowKey]RowVersion, error) {
	defer rows.Close()
	out := make(map[RowKey]RowVersion, hint)
	for rows.Next() {
		var (
			k       RowKey
			rv      RowVersion
			logical int64
			origin  string
			vc      []byte
			xmin    int64
			floor   []byte
			cols    []byte
			olsn    int64
			claims  []byte
			flsns   []byte
		)
		if err := rows.Scan(&k.Table, &k.Key, &rv.Version.HLC.Wall, &logical, &origin, &vc, &rv.Deleted, &xmin, &floor, &cols, &olsn, &claims, &flsns); err != nil {
			return nil, fmt.Errorf("load row versions: %w", err)
		}
		rv.Version.HLC.Logical = uint32(logical)
		rv.Version.Origin = casualdb.SiteID(origin)
		rv.Xmin = uint32(xmin)
		rv.OriginLSN = uint64(olsn)
		if err := json.Unmarshal(vc, &rv.Version.VC); err != nil {
			return nil, fmt.Errorf("load row version %s %s: vclock: %w", k.Table, k.Key, err)
		}
		if floor != nil {
			if err := json.Unmarshal(floor, &rv.Floor); err != nil {
				return nil, fmt.Errorf("load row version %s %s: floor: %w", k.Table, k.Key, err)
			}
		}
		if flsns != nil {
			if err := json.Unmarshal(flsns, &rv.FloorLSNs); err != nil {
				return nil, fmt.Errorf("load row version %s %s: floor LSNs: %w", k.Table, k.Key, err)
			}
		}
		if cols != nil {
			if err := json.Unmarshal(cols, &rv.Columns); err != nil {
				return nil, fmt.Errorf("load row version %s %s: column versions: %w", k.Table, k.Key, err)
			}
		}
		if claims != nil {
			if err := json.Unmarshal(claims, &rv.Claims); err != nil {
				return nil, fmt.Errorf("load row version %s %s: claims: %w", k.Table, k.Key, err)
			}
		}
		out[k] = rv
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load row versions: %w", err)
	}
	return out, nil
}

// SaveVersions records versions, replacing what was recorded, in one statement.
func SaveVersions(ctx context.Context, q Execer, vs map[RowKey]RowVersion) error {
	return saveVersions(ctx, q, vs, false)
}

// SaveNewerVersions records versions, each only where the recorded one is
// older by (HLC, origin). Capture records a local write's version after
// apply may have decided against it and written its own (see
// capture.Capturer.Pending); apply's is then the same or greater, and wins.
func SaveNewerVersions(ctx context.Context, q Execer, vs map[RowKey]RowVersion) error {
	return saveVersions(ctx, q, vs, true)
}

func saveVersions(ctx context.Context, q Execer, vs map[RowKey]RowVersion, newer bool) error {
	if len(vs) == 0 {
		return nil
	}
	n := len(vs)
	var (
		tbls    = make([]string, 0, n)
		keys    = make([]string, 0, n)
		walls   = make([]int64, 0, n)
		logical = make([]int64, 0, n)
		origins = make([]string, 0, n)
		vcs     = make([]string, 0, n)
		deleted = make([]bool, 0, n)
		xmins   = make([]*int64, 0, n)
		floors  = make([]*string, 0, n)
		colvs   = make([]*string, 0, n)
		olsns   = make([]*int64, 0, n)
		claims  = make([]*string, 0, n)
		flsns   = make([]*string, 0, n)
	)
	// In key order: capture and apply may record some of the same rows at
	// once, and the same order makes them wait for each other rather than
	// deadlock.
	order := make([]RowKey, 0, n)
	for k := range vs {
		order = append(order, k)
	}
	slices.SortFunc(order, func(a, b RowKey) int {
		if c := strings.Compare(a.Table, b.Table); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	for _, k := range order {
		rv := vs[k]
		vc, err := json.Marshal(rv.Version.VC)
		if err != nil {
			return fmt.Errorf("save row version %s %s: %w", k.Table, k.Key, err)
		}
		tbls = append(tbls, k.Table)
		keys = append(keys, k.Key)
		walls = append(walls, rv.Version.HLC.Wall)
		logical = append(logical, int64(rv.Version.HLC.Logical))
		origins = append(origins, string(rv.Version.Origin))
		vcs = append(vcs, string(vc))
		deleted = append(deleted, rv.Deleted)
		if rv.Xmin != 0 {
			x := int64(rv.Xmin)
			xmins = append(xmins, &x)
		} else {
			xmins = append(xmins, nil)
		}
		floor, e1 := jsonIf(len(rv.Floor) > 0, rv.Floor)
		colv, e2 := jsonIf(len(rv.Columns) > 0, rv.Columns)
		claim, e3 := jsonIf(len(rv.Claims) > 0, rv.Claims)
		flsn, e4 := jsonIf(len(rv.FloorLSNs) > 0 && len(rv.Floor) > 0, rv.FloorLSNs)
		if err := errors.Join(e1, e2, e3, e4); err != nil {
			return fmt.Errorf("save row version %s %s: %w", k.Table, k.Key, err)
		}
		floors, colvs, claims, flsns = append(floors, floor), append(colvs, colv), append(claims, claim), append(flsns, flsn)
		if rv.OriginLSN != 0 {
			l := int64(rv.OriginLSN)
			olsns = append(olsns, &l)
		} else {
			olsns = append(olsns, nil)
		}
	}
	sql := saveVersionsSQL
	if newer {
		sql += ` WHERE (v.hlc_wall, v.hlc_logical, v.origin COLLATE "C") < (excluded.hlc_wall, excluded.hlc_logical, excluded.origin COLLATE "C")`
	}
	_, err := q.Exec(ctx, sql, tbls, keys, walls, logical, origins, vcs, deleted, xmins, floors, colvs, olsns, claims, flsns)
	if err != nil {
		return fmt.Errorf("save %d row versions: %w", n, err)
	}
	return nil
}

const saveVersionsSQL = `
		INSERT INTO casualdb.row_version AS v (tbl, key, hlc_wall, hlc_logical, origin, vclock, deleted, row_xmin, floor, col_versions, origin_lsn, claims, floor_lsns)
		SELECT tbl, key, wall, logical, origin, vc::jsonb, deleted, xmin, floor::jsonb, colv::jsonb, olsn, cl::jsonb, flsns::jsonb
		FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::bool[], $8::bigint[], $9::text[], $10::text[], $11::bigint[], $12::text[], $13::text[])
		  AS u(tbl, key, wall, logical, origin, vc, deleted, xmin, floor, colv, olsn, cl, flsns)
		ON CONFLICT (tbl, key) DO UPDATE SET
			hlc_wall = excluded.hlc_wall, hlc_logical = excluded.hlc_logical, origin = excluded.origin,
			vclock = excluded.vclock, deleted = excluded.deleted, row_xmin = excluded.row_xmin,
			floor = excluded.floor, col_versions = excluded.col_versions, origin_lsn = excluded.origin_lsn,
			claims = excluded.claims, floor_lsns = ` + joinFloorLSNsSQL + `, updated_at = now()`

// joinFloorLSNsSQL is the recorded floor_lsns after a save (see
// RowVersion.FloorLSNs): none without a floor; the recorded ones when the
// save names no delete; unknown when the recorded floor's deletes are
// unknown; else the join (per origin, the greater LSN) of both. The floor
// only grows while the row is recorded, so the deletes recorded still
// belong to it.
const joinFloorLSNsSQL = `CASE
				WHEN excluded.floor IS NULL THEN NULL
				WHEN excluded.floor_lsns IS NULL THEN v.floor_lsns
				WHEN v.floor IS NULL THEN excluded.floor_lsns
				WHEN v.floor_lsns IS NULL THEN NULL
				ELSE (SELECT jsonb_object_agg(o, l) FROM (
					SELECT key AS o, max(value::numeric) AS l FROM (
						SELECT key, value FROM jsonb_each_text(v.floor_lsns)
						UNION ALL SELECT key, value FROM jsonb_each_text(excluded.floor_lsns)) e
					GROUP BY key) j) END`

// Written is what one transaction recorded: the versions of the rows it
// wrote and the truncation markers it raised. Apply hands capture what each
// of its transactions wrote (capture keeps versions in memory).
type Written struct {
	Versions    map[RowKey]RowVersion
	Truncations map[string]casualdb.Version
}

// jsonIf returns v as JSON text when cond holds, else nil (SQL NULL).
func jsonIf(cond bool, v any) (*string, error) {
	if !cond {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := string(b)
	return &out, nil
}
