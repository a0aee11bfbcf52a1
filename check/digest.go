package check

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// What a site hashes. Every row of a replicated table, and every live
// version on record for a key whose row is missing, is one entry: its key,
// the winning version on record (HLC, origin, deleted; not the clocks,
// which only classify conflicts) and the row's image, to_jsonb of the row
// as text (jsonb orders the keys itself, so the columns' physical order
// does not matter). A tombstone without a row is no entry in the digest:
// sites collect tombstones at their own pace, and a collected tombstone and
// a kept one mean the same (the row is gone). The listing of a bucket shows
// tombstones all the same, so that a delete is seen for what it is.
//
// Entries fall into buckets by a hash of their key's text, as the type's
// output function writes it (what pgoutput ships and casualdb.row_version
// records). A bucket's digest is the number of its entries and the sum of
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
// the table's columns and truncation marker (which must agree before rows
// are compared), and what computing it read.
type Summary struct {
	Buckets    []Bucket        `json:"buckets"`
	Columns    string          `json:"columns"`              // name and type of every column, sorted
	Truncation *casualdb.Stamp `json:"truncation,omitempty"` // the table's truncation marker, if any
	Cost       Cost            `json:"cost"`
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
	// The version on record, if any (a tombstone when Deleted), with its
	// clock and delete floor, and the commit LSN at its origin.
	Version   *casualdb.Version    `json:"version,omitempty"`
	Deleted   bool                 `json:"deleted,omitempty"`
	Floor     casualdb.VectorClock `json:"floor,omitempty"`
	OriginLSN uint64               `json:"origin_lsn,omitempty"`
	// Fresh: the row was written by a transaction that began after the
	// site settled (Site.Settle) and capture has not versioned it yet: a
	// write racing the check, not a difference.
	Fresh bool `json:"fresh,omitempty"`
}

// live returns the entry's version unless it is a tombstone (or none).
func (e Entry) live() *casualdb.Stamp {
	if e.Version == nil || e.Deleted {
		return nil
	}
	s := e.Version.Stamp()
	return &s
}

// same tells whether two sites hold the same for a key: the same row (or
// none), under the same version; an absent row's tombstone counts as no
// version, as in the digest.
func (e Entry) same(o Entry) bool {
	if e.Present != o.Present || e.Image != o.Image {
		return false
	}
	if e.Present {
		if (e.Version == nil) != (o.Version == nil) || e.Deleted != o.Deleted {
			return false
		}
		return e.Version == nil || e.Version.Stamp() == o.Version.Stamp()
	}
	a, b := e.live(), o.live()
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

// table is a replicated table as this site's catalog describes it.
type table struct {
	name  string // CasualDB name
	desc  *apply.Table
	keys  string // SQL: the key's values as text, in key order
	where string // SQL: t's key equals the text values $1...
}

func describe(ctx context.Context, q meta.Querier, name string) (*table, error) {
	schema, rel, _ := strings.Cut(name, ".")
	d, err := apply.DescribeTable(ctx, q, schema, rel)
	if err != nil {
		return nil, err
	}
	if !d.IsTable() {
		return nil, fmt.Errorf("%w: %s is not a table here", casualdb.ErrSchemaMismatch, name)
	}
	if len(d.Keys) == 0 {
		return nil, fmt.Errorf("%w: table %s has no primary key", casualdb.ErrSchemaMismatch, name)
	}
	t := &table{name: name, desc: d}
	keys, conds := make([]string, len(d.Keys)), make([]string, len(d.Keys))
	for i, k := range d.Keys {
		c, _ := d.Column(k)
		id := "t." + pgx.Identifier{k}.Sanitize()
		// The output function's text, as pgoutput ships it (bool is "t",
		// not "true"; char(n) keeps its padding).
		keys[i] = "format('%s', " + id + ")"
		conds[i] = fmt.Sprintf("%s = CAST($%d::text AS %s)", id, i+1, c.Type)
	}
	t.keys, t.where = strings.Join(keys, ", "), strings.Join(conds, " AND ")
	return t, nil
}

// columns is the table's signature: its columns' names and types, sorted.
func (t *table) columns() string {
	cs := make([]string, len(t.desc.Columns))
	for i, c := range t.desc.Columns {
		cs[i] = c.Name + " " + c.Type
	}
	slices.Sort(cs)
	return strings.Join(cs, ", ")
}

// entriesSQL selects a table's entries with their bucket (b), key values
// (k), image text (img), version and hash (h); %[1]s is the table, %[2]s
// its key values as text, %[3]s the extra condition on the joined
// versions; $1 is the table's CasualDB name, $2 the bucket count.
const entriesSQL = `
	WITH r AS (
		SELECT ARRAY[%[2]s] AS k, to_jsonb(t)::text AS img, t.xmin::text::bigint AS xmin FROM %[1]s AS t
	), v AS (
		SELECT ARRAY(SELECT json_array_elements_text(key::json)) AS k, hlc_wall, hlc_logical, origin, deleted, origin_lsn, vclock, floor, row_xmin
		FROM casualdb.row_version WHERE tbl = $1
	), e AS (
		SELECT coalesce(r.k, v.k) AS k, r.img, r.xmin, v.hlc_wall, v.hlc_logical, v.origin, v.deleted, v.origin_lsn, v.vclock, v.floor, v.row_xmin
		FROM r FULL JOIN v ON r.k = v.k
		WHERE r.k IS NOT NULL %[3]s
	)
	SELECT ('x' || substr(md5(array_to_json(k)::text), 1, 7))::bit(28)::int %% $2 AS b, *,
	       ('x' || substr(md5(array_to_json(k)::text || '|' || coalesce(hlc_wall || '.' || hlc_logical || '.' || origin || '.' || deleted, '') || '|' || coalesce(img, '')), 1, 16))::bit(64)::bigint AS h
	FROM e`

func (t *table) entries(cond string) string {
	return fmt.Sprintf(entriesSQL, t.desc.Ident(), t.keys, cond)
}

// BucketLimit bounds the buckets of a digest: a peer's request names how
// many, and a summary holds one per bucket.
const BucketLimit = 1 << 20

// bucketsOK refuses a bucket count outside 1..BucketLimit (a peer asking
// for 10^12 buckets would otherwise size an allocation by it).
func bucketsOK(name string, n int) error {
	if n <= 0 || n > BucketLimit {
		return fmt.Errorf("check %s: %d buckets (1 to %d)", name, n, BucketLimit)
	}
	return nil
}

// Summarize computes the digest of the table named name (schema.name) in n
// buckets on q. Run it on a connection with casualdb.CanonicalParams: the
// images are text.
func Summarize(ctx context.Context, q meta.Querier, name string, n int) (Summary, error) {
	if err := bucketsOK(name, n); err != nil {
		return Summary{}, err
	}
	t, err := describe(ctx, q, name)
	if err != nil {
		return Summary{}, err
	}
	s := Summary{Buckets: make([]Bucket, n), Columns: t.columns()}
	var wall, logical *int64
	var origin *string
	err = q.QueryRow(ctx, `SELECT max(hlc_wall), max(hlc_logical), max(origin) FROM casualdb.truncation WHERE tbl = $1`, name).Scan(&wall, &logical, &origin)
	if err != nil {
		return Summary{}, fmt.Errorf("check %s: truncation marker: %w", name, err)
	}
	if wall != nil {
		s.Truncation = &casualdb.Stamp{HLC: casualdb.HLC{Wall: *wall, Logical: uint32(*logical)}, Origin: casualdb.SiteID(*origin)}
	}
	rows, err := q.Query(ctx, `SELECT b, count(*), sum(h)::text, sum(coalesce(octet_length(img), 0)) FROM (`+t.entries("OR NOT v.deleted")+`) AS d GROUP BY b`, name, n)
	if err != nil {
		return Summary{}, fmt.Errorf("check %s: %w", name, err)
	}
	defer rows.Close()
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

// Page bounds a listing: at most Limit entries with keys after After (a
// KeyString; empty: from the first).
type Page struct {
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}

// DefaultPageSize is the most entries one answer carries: a page of rows
// stays far below NATS's message size.
const DefaultPageSize = 2000

// Filter chooses the entries to list: those in Buckets (of n), or, when
// Keys is set, those keys (KeyStrings).
type Filter struct {
	Buckets []int    `json:"buckets,omitempty"`
	Keys    []string `json:"keys,omitempty"`
}

// Entries lists, in key order, the entries of the table named name that f
// chooses, tombstones included, one page of them, and what it
// read; more tells whether entries follow. since is the first transaction
// id of the site's settled point (Site.Settle): a row written by a later
// transaction that capture has not versioned is Fresh (0: none is).
func Entries(ctx context.Context, q meta.Querier, name string, n int, f Filter, since uint32, page Page) (out []Entry, cost Cost, more bool, err error) {
	if err := bucketsOK(name, n); err != nil {
		return nil, Cost{}, false, err
	}
	t, err := describe(ctx, q, name)
	if err != nil {
		return nil, Cost{}, false, err
	}
	if page.Limit <= 0 {
		page.Limit = DefaultPageSize
	}
	var after []string
	if page.After != "" {
		if err := json.Unmarshal([]byte(page.After), &after); err != nil {
			return nil, Cost{}, false, fmt.Errorf("check %s: page after %q: %w", name, page.After, err)
		}
	}
	cond, arg := "b = ANY($3)", any(f.Buckets)
	if len(f.Keys) > 0 {
		// As jsonb: Go and PostgreSQL escape JSON strings differently.
		cond, arg = "array_to_json(k)::jsonb = ANY($3::jsonb[])", f.Keys
	}
	// xmin "at or after" since, modulo 2^32 (transaction ids wrap).
	rows, err := q.Query(ctx, `SELECT k, img IS NOT NULL, coalesce(md5(img), ''), coalesce(octet_length(img), 0), hlc_wall, hlc_logical, origin, deleted, origin_lsn, vclock, floor,
			img IS NOT NULL AND $4::bigint > 0 AND ((xmin - $4::bigint) & 4294967295) < 2147483648 AND (row_xmin IS NULL OR row_xmin <> xmin)
		FROM (`+t.entries("OR v.k IS NOT NULL")+`) AS d WHERE `+cond+` AND ($5::text[] IS NULL OR k > $5::text[]) ORDER BY k LIMIT $6`,
		name, n, arg, int64(since), after, page.Limit+1)
	if err != nil {
		return nil, Cost{}, false, fmt.Errorf("check %s: list entries: %w", name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			e             Entry
			key           []string
			bytes         int64
			wall, logical *int64
			origin        *string
			deleted       *bool
			originLSN     *int64
			vc, floor     []byte
		)
		if err := rows.Scan(&key, &e.Present, &e.Image, &bytes, &wall, &logical, &origin, &deleted, &originLSN, &vc, &floor, &e.Fresh); err != nil {
			return nil, Cost{}, false, fmt.Errorf("check %s: list entries: %w", name, err)
		}
		if len(out) == page.Limit {
			more = true
			break
		}
		e.Key = casualdb.KeyString(key)
		if wall != nil {
			e.Version = &casualdb.Version{HLC: casualdb.HLC{Wall: *wall, Logical: uint32(*logical)}, Origin: casualdb.SiteID(*origin)}
			e.Deleted = *deleted
			if originLSN != nil {
				e.OriginLSN = uint64(*originLSN)
			}
			if err := errors.Join(unmarshalIf(vc, &e.Version.VC), unmarshalIf(floor, &e.Floor)); err != nil {
				return nil, Cost{}, false, fmt.Errorf("check %s: key %s: %w", name, e.Key, err)
			}
		}
		out = append(out, e)
		cost.add(Cost{Rows: 1, Bytes: bytes})
	}
	if err := rows.Err(); err != nil {
		return nil, Cost{}, false, fmt.Errorf("check %s: list entries: %w", name, err)
	}
	return out, cost, more, nil
}

func unmarshalIf(b []byte, v any) error {
	if b == nil {
		return nil
	}
	return json.Unmarshal(b, v)
}
