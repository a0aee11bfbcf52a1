package check

import (
	"context"
	"fmt"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// What a site hashes. Every row of a replicated table, and every live
// version on record for a key whose row is missing, is one entry: its key,
// the winning version on record (HLC, origin, deleted; not the clocks,
// which only classify conflicts) and the row's image as text under the
// canonical session settings. A tombstone without a row is no entry: sites
// collect tombstones at their own pace, and a collected tombstone and a
// kept one mean the same (the row is gone).
//
// Entries fall into buckets by a hash of their key. A bucket's digest is
// the number of its entries and the sum, modulo nothing (a numeric), of
// their 64-bit hashes: independent of the order PostgreSQL reads them in.
// Every site computes the same bucket and hash for the same entry, so two
// sites hold the same entries exactly when (with overwhelming probability)
// their digests agree.

// Bucket is the digest of one bucket of a table at one site.
type Bucket struct {
	N   int64  `json:"n"` // entries
	Sum string `json:"s"` // sum of their hashes, decimal
}

// Summary is a table's digest at one site: one Bucket per bucket number,
// and what computing it read.
type Summary struct {
	Buckets []Bucket `json:"buckets"`
	Cost    Cost     `json:"cost"`
}

// Cost is what a site read to answer: table rows (entries) and the bytes
// of their images.
type Cost struct {
	Rows  int64 `json:"rows"`
	Bytes int64 `json:"bytes"`
}

func (c *Cost) add(o Cost) { c.Rows, c.Bytes = c.Rows+o.Rows, c.Bytes+o.Bytes }

// Entry is one key of a table at one site, as the drill-down lists it.
type Entry struct {
	Key     string `json:"key"`     // casualdb.KeyString of the key's values
	Present bool   `json:"present"` // the row exists here
	Image   string `json:"image"`   // md5 of the row's image (empty when absent)
	// The version on record, if any.
	Version   *casualdb.Version `json:"version,omitempty"`
	Deleted   bool              `json:"deleted,omitempty"`
	OriginLSN uint64            `json:"origin_lsn,omitempty"`
}

// same tells whether two sites hold the same for a key.
func (e Entry) same(o Entry) bool {
	if e.Present != o.Present || e.Image != o.Image || e.Deleted != o.Deleted || (e.Version == nil) != (o.Version == nil) {
		return false
	}
	return e.Version == nil || e.Version.Stamp() == o.Version.Stamp()
}

// entriesSQL is the query of a table's entries with their bucket (b), key
// values (k), image text (img) and version; %[1]s is the table, %[2]s its
// key columns as text, $1 the table's CasualDB name, $2 the bucket count.
const entriesSQL = `
	WITH r AS (
		SELECT ARRAY[%[2]s] AS k, row_to_json(t)::text AS img FROM %[1]s AS t
	), v AS (
		SELECT ARRAY(SELECT json_array_elements_text(key::json)) AS k, hlc_wall, hlc_logical, origin, deleted, origin_lsn
		FROM casualdb.row_version WHERE tbl = $1
	), e AS (
		SELECT coalesce(r.k, v.k) AS k, r.img, v.hlc_wall, v.hlc_logical, v.origin, v.deleted, v.origin_lsn
		FROM r FULL JOIN v ON r.k = v.k
		WHERE r.k IS NOT NULL OR NOT v.deleted
	)
	SELECT ('x' || substr(md5(array_to_json(k)::text), 1, 7))::bit(28)::int %% $2 AS b, *,
	       ('x' || substr(md5(array_to_json(k)::text || '|' || coalesce(hlc_wall || '.' || hlc_logical || '.' || origin || '.' || deleted, '') || '|' || coalesce(img, '')), 1, 16))::bit(64)::bigint AS h
	FROM e`

// query builds a statement over the entries of the table named name (a
// CasualDB name, schema.name) as described on q.
func query(ctx context.Context, q meta.Querier, name, outer string) (string, error) {
	schema, rel, _ := strings.Cut(name, ".")
	t, err := apply.DescribeTable(ctx, q, schema, rel)
	if err != nil {
		return "", err
	}
	if len(t.Keys) == 0 {
		return "", fmt.Errorf("%w: table %s has no primary key", casualdb.ErrSchemaMismatch, name)
	}
	keys := make([]string, len(t.Keys))
	for i, k := range t.Keys {
		keys[i] = "t." + pgx.Identifier{k}.Sanitize() + "::text"
	}
	return fmt.Sprintf(outer, fmt.Sprintf(entriesSQL, t.Ident(), strings.Join(keys, ", "))), nil
}

// Summarize computes the digest of the table named name (schema.name) in n
// buckets on q. Run it on a connection with casualdb.CanonicalParams: the
// images are text.
func Summarize(ctx context.Context, q meta.Querier, name string, n int) (Summary, error) {
	if n <= 0 {
		return Summary{}, fmt.Errorf("check %s: %d buckets", name, n)
	}
	sql, err := query(ctx, q, name, `SELECT b, count(*), sum(h)::text, sum(coalesce(octet_length(img), 0)) FROM (%s) AS d GROUP BY b`)
	if err != nil {
		return Summary{}, err
	}
	rows, err := q.Query(ctx, sql, name, n)
	if err != nil {
		return Summary{}, fmt.Errorf("check %s: %w", name, err)
	}
	defer rows.Close()
	s := Summary{Buckets: make([]Bucket, n)}
	for i := range s.Buckets {
		s.Buckets[i].Sum = "0"
	}
	for rows.Next() {
		var b int
		var bk Bucket
		var bytes int64
		if err := rows.Scan(&b, &bk.N, &bk.Sum, &bytes); err != nil {
			return Summary{}, fmt.Errorf("check %s: %w", name, err)
		}
		if b < 0 || b >= n {
			return Summary{}, fmt.Errorf("check %s: bucket %d of %d", name, b, n)
		}
		s.Buckets[b] = bk
		s.Cost.add(Cost{Rows: bk.N, Bytes: bytes})
	}
	if err := rows.Err(); err != nil {
		return Summary{}, fmt.Errorf("check %s: %w", name, err)
	}
	return s, nil
}

// Entries lists the entries of the table named name in the given buckets
// (of n), and what listing them read.
func Entries(ctx context.Context, q meta.Querier, name string, n int, buckets []int) ([]Entry, Cost, error) {
	sql, err := query(ctx, q, name, `SELECT k, img IS NOT NULL, coalesce(md5(img), ''), coalesce(octet_length(img), 0), hlc_wall, hlc_logical, origin, deleted, origin_lsn FROM (%s) AS d WHERE b = ANY($3) ORDER BY k`)
	if err != nil {
		return nil, Cost{}, err
	}
	rows, err := q.Query(ctx, sql, name, n, buckets)
	if err != nil {
		return nil, Cost{}, fmt.Errorf("check %s: list entries: %w", name, err)
	}
	defer rows.Close()
	var out []Entry
	var cost Cost
	for rows.Next() {
		var (
			e         Entry
			key       []string
			bytes     int64
			wall, lg  *int64
			origin    *string
			deleted   *bool
			originLSN *int64
		)
		if err := rows.Scan(&key, &e.Present, &e.Image, &bytes, &wall, &lg, &origin, &deleted, &originLSN); err != nil {
			return nil, Cost{}, fmt.Errorf("check %s: list entries: %w", name, err)
		}
		e.Key = casualdb.KeyString(key)
		if wall != nil {
			e.Version = &casualdb.Version{HLC: casualdb.HLC{Wall: *wall, Logical: uint32(*lg)}, Origin: casualdb.SiteID(*origin)}
			e.Deleted = *deleted
			if originLSN != nil {
				e.OriginLSN = uint64(*originLSN)
			}
		}
		out = append(out, e)
		cost.add(Cost{Rows: 1, Bytes: bytes})
	}
	if err := rows.Err(); err != nil {
		return nil, Cost{}, fmt.Errorf("check %s: list entries: %w", name, err)
	}
	return out, cost, nil
}
