// Package casualdb holds the shared vocabulary of CasualDB: sites, versions,
// transactions and changes, and transactions as the inbox delivers them
// (InboxMsg). It imports nothing internal, so that capture, conflict, apply
// and the transport can all depend on it without cycles.
//
// A change travels as a Tx: capture decodes it from the origin's WAL and gives
// every row change a Version; the transport ships it from the origin's outbox
// to every peer's inbox; apply merges it into the peer's database.
package casualdb

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// SiteID names a site (one PostgreSQL plus its sidecar). It is stable for the
// life of the cluster and breaks ties between equal clocks.
type SiteID string

// siteName is what a site may be called: 1-31 lower-case letters, digits,
// '-' or '_', starting with a letter or digit.
var siteName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,30}$`)

// Valid tells whether s is a well-formed site name.
func (s SiteID) Valid() bool { return siteName.MatchString(string(s)) }

// HLC is a hybrid logical clock timestamp: Wall is physical time in
// microseconds since the Unix epoch (PostgreSQL's commit timestamp
// resolution), Logical orders events within one microsecond.
type HLC struct {
	Wall    int64  `json:"w"`
	Logical uint32 `json:"l,omitempty"`
}

// Compare returns -1, 0 or 1 as h is before, equal to or after o.
func (h HLC) Compare(o HLC) int {
	switch {
	case h.Wall < o.Wall:
		return -1
	case h.Wall > o.Wall:
		return 1
	case h.Logical < o.Logical:
		return -1
	case h.Logical > o.Logical:
		return 1
	}
	return 0
}

// Time returns the physical part of h.
func (h HLC) Time() time.Time { return time.UnixMicro(h.Wall).UTC() }

// String renders h as "wall.logical".
func (h HLC) String() string {
	return strconv.FormatInt(h.Wall, 10) + "." + strconv.FormatUint(uint64(h.Logical), 10)
}

// VectorClock counts, per site, the writes to one row that a version has seen.
// A nil clock is the empty clock.
type VectorClock map[SiteID]uint64

// Clone returns a copy of c that shares nothing with it.
func (c VectorClock) Clone() VectorClock {
	out := make(VectorClock, len(c)+1)
	for k, v := range c {
		out[k] = v
	}
	return out
}

// Version identifies one state of one row: who wrote it, when by the hybrid
// clock, and what it had seen. Versions are totally ordered by (HLC, Origin).
type Version struct {
	HLC    HLC         `json:"hlc"`
	Origin SiteID      `json:"origin"`
	VC     VectorClock `json:"vc"`
}

// Stamp is the last-writer-wins part of a version, without the vector clock:
// enough to order the writes of one column.
type Stamp struct {
	HLC    HLC    `json:"hlc"`
	Origin SiteID `json:"origin"`
}

// Stamp returns v's HLC and origin.
func (v Version) Stamp() Stamp { return Stamp{HLC: v.HLC, Origin: v.Origin} }

// Less orders stamps as conflict.Less orders versions: by HLC, then origin.
func (s Stamp) Less(o Stamp) bool {
	if c := s.HLC.Compare(o.HLC); c != 0 {
		return c < 0
	}
	return s.Origin < o.Origin
}

// Claim records when a row took the value it holds in one column of a
// unique index other than the primary key: the stamp of the change that set
// that value (not of later changes that left it alone), and a hash of the
// value (conflict.ClaimHash), by which the origin of the row's next change tells
// whether that change sets another value. Of two rows that claim one value
// of such an index, the earlier claim keeps it (conflict.EarlierClaim).
type Claim struct {
	Stamp
	Hash uint64 `json:"h"`
}

// String renders v compactly for logs.
func (v Version) String() string { return fmt.Sprintf("%s@%s", v.HLC, v.Origin) }

// Op is the kind of a row change.
type Op string

// The row operations that capture emits.
const (
	OpInsert   Op = "I"
	OpUpdate   Op = "U"
	OpDelete   Op = "D"
	OpTruncate Op = "T"
)

// Value is one column value in PostgreSQL's text representation. Unchanged
// marks an unchanged TOASTed column of an UPDATE whose value the WAL does not
// carry: it must never be written as NULL.
type Value struct {
	Text      string `json:"t,omitempty"`
	Null      bool   `json:"n,omitempty"`
	Unchanged bool   `json:"u,omitempty"`
}

// Column describes one column of a replicated table.
type Column struct {
	Name string `json:"name"`
	Type string `json:"type"` // type name as format_type renders it, e.g. "integer", "text[]"
	Key  bool   `json:"key,omitempty"`
}

// Relation describes a replicated table as its origin saw it.
type Relation struct {
	Table   string   `json:"table"` // TableName(Schema, Name): the key of Tx.Relations
	Schema  string   `json:"schema"`
	Name    string   `json:"name"`
	Columns []Column `json:"columns"`
}

// TableName is how CasualDB names a table in messages and metadata:
// schema and name joined by a dot, unquoted.
func TableName(schema, name string) string { return schema + "." + name }

// KeyColumns returns the indexes of the primary-key columns of r in order.
func (r Relation) KeyColumns() []int {
	var idx []int
	for i, c := range r.Columns {
		if c.Key {
			idx = append(idx, i)
		}
	}
	return idx
}

// Change is one row change of a transaction.
type Change struct {
	Table string `json:"table"`
	Op    Op     `json:"op"`
	// Key holds the primary-key values in text form, in key-column order.
	Key []string `json:"key,omitempty"`
	// Values holds the new row, one value per column of the relation
	// (insert and update); nil for delete and truncate.
	Values  []Value `json:"values,omitempty"`
	Version Version `json:"version"`
	// Deltas, for the counter columns of its table (insert and update),
	// is by how much the change moved each: new minus old value, as an
	// exact decimal. Receivers add it to their own value instead of
	// overwriting it, so concurrent increments all count.
	Deltas map[string]string `json:"deltas,omitempty"`
	// Columns, for a table whose columns merge one by one, is the version of
	// every column of the row at the origin after this change: the change's
	// own for the columns it wrote, the earlier ones for the others.
	Columns map[string]Stamp `json:"columns,omitempty"`
	// Changed is what capture's decoder saw the change write (for tables
	// whose columns merge); nil when it could not tell. Not shipped.
	Changed map[string]bool `json:"-"`
	// Claims, for a table with unique indexes other than the primary key
	// (insert and update), is the claim of every column of those indexes
	// at the origin after this change: the change's own stamp for a column
	// whose value it changed, the earlier claim for the others. Capture
	// computes it at the origin; every site keeps it with the row's version
	// and compares the same claims (see conflict.ClaimOf).
	Claims map[string]Claim `json:"claims,omitempty"`
	// ClaimColumns are the columns of the table's unique indexes other than
	// the primary key, as capture's decoder found them (insert and update);
	// capture computes Claims for them. Not shipped.
	ClaimColumns []string `json:"-"`
	// Floor is the row's delete floor at the origin after this change (see
	// conflict.Row), kept so that the origin can re-derive its metadata
	// from its outbox after a crash; receivers keep their own.
	Floor VectorClock `json:"floor,omitempty"`
}

// KeyString is the canonical encoding of a primary key, identical at every
// site because PostgreSQL's text output of a value is canonical for its type.
func KeyString(key []string) string {
	b, _ := json.Marshal(key)
	return string(b)
}

// DisplayKey renders a key as KeyString encodes it more readably, for
// people: 42 for ["42"], (1,a) for ["1","a"]. Values that would be
// ambiguous unquoted keep the JSON form, as does anything that is not a
// non-empty JSON array of strings.
func DisplayKey(key string) string {
	var vals []string
	if err := json.Unmarshal([]byte(key), &vals); err != nil || len(vals) == 0 {
		return key
	}
	for _, v := range vals {
		if v == "" || strings.ContainsAny(v, " ,()\"\\") || strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			return key
		}
	}
	if len(vals) == 1 {
		return vals[0]
	}
	return "(" + strings.Join(vals, ",") + ")"
}

// Tx is one committed transaction of its origin.
type Tx struct {
	Origin SiteID `json:"origin"`
	// Seq is the transaction's position in its origin's outbox, gapless and
	// increasing from 1; the transport fills it in.
	Seq uint64 `json:"seq,omitempty"`
	// LSN is the end of the transaction's commit record at the origin.
	LSN        uint64    `json:"lsn"`
	Xid        uint32    `json:"xid"`
	CommitTime time.Time `json:"commit_time"`
	// Relations describes every table that Changes touch, by table name.
	Relations map[string]Relation `json:"relations"`
	Changes   []Change            `json:"changes"`
	// Deps is what the origin had applied from other sites when the
	// transaction committed: per site, the commit LSN (at that site) of the
	// last of its transactions applied at the origin. A site applies the
	// transaction only after it has applied as much from each of them
	// (causal delivery), so a child row never arrives before its parent.
	Deps map[SiteID]uint64 `json:"deps,omitempty"`
}

// ID names the transaction uniquely in the cluster: origin and commit LSN.
func (t *Tx) ID() string { return string(t.Origin) + "-" + FormatLSN(t.LSN) }

// FormatLSN renders an LSN as PostgreSQL does: 16/B374D848.
func FormatLSN(lsn uint64) string { return fmt.Sprintf("%X/%X", uint32(lsn>>32), uint32(lsn)) }

// ParseLSN parses PostgreSQL's text form of an LSN.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("parse lsn %q: missing '/'", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse lsn %q: %w", s, err)
	}
	return h<<32 | l, nil
}

// decodeJSON reads the JSON encoding of a Tx, which sidecars of earlier
// versions wrote (see codec.go).
func decodeJSON(b []byte) (*Tx, error) {
	var t Tx
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Validate checks the structural invariants apply relies on.
func (t *Tx) Validate() error {
	if t.Origin == "" {
		return fmt.Errorf("%w: tx without origin", ErrGarbled)
	}
	if t.LSN == 0 {
		return fmt.Errorf("%w: tx %s without commit lsn", ErrGarbled, t.Origin)
	}
	// A relation is named three times (its key here, Table, Schema and
	// Name): apply checks one and writes through another, so they must
	// agree.
	for key, rel := range t.Relations {
		if rel.Table != key || rel.Table != TableName(rel.Schema, rel.Name) || rel.Schema == "" || rel.Name == "" {
			return fmt.Errorf("%w: tx %s: relation %q names table %q, schema %q, name %q", ErrGarbled, t.ID(), key, rel.Table, rel.Schema, rel.Name)
		}
		// PostgreSQL refuses such text in a query (apply would fail on
		// it, run after run); no table can be so named.
		if !utf8.ValidString(rel.Table) || strings.IndexByte(rel.Table, 0) >= 0 {
			return fmt.Errorf("%w: tx %s: relation %q: a name with NUL or bytes that are not UTF-8", ErrGarbled, t.ID(), key)
		}
	}
	for i, c := range t.Changes {
		rel, ok := t.Relations[c.Table]
		if !ok {
			return fmt.Errorf("%w: tx %s change %d: table %q not described", ErrGarbled, t.ID(), i, c.Table)
		}
		switch c.Op {
		case OpInsert, OpUpdate:
			if len(c.Values) != len(rel.Columns) {
				return fmt.Errorf("%w: tx %s change %d: %d values for %d columns of %s", ErrGarbled, t.ID(), i, len(c.Values), len(rel.Columns), c.Table)
			}
			fallthrough
		case OpDelete:
			if len(c.Key) == 0 || len(c.Key) != len(rel.KeyColumns()) {
				return fmt.Errorf("%w: tx %s change %d: key of %d values for %s", ErrGarbled, t.ID(), i, len(c.Key), c.Table)
			}
		case OpTruncate:
		default:
			return fmt.Errorf("%w: tx %s change %d: unknown op %q", ErrGarbled, t.ID(), i, c.Op)
		}
		if c.Version.Origin == "" || c.Version.HLC.Wall == 0 {
			return fmt.Errorf("%w: tx %s change %d: missing version", ErrGarbled, t.ID(), i)
		}
	}
	return nil
}

// CanonicalParams are the session settings under which every CasualDB
// connection runs, so that PostgreSQL renders every value as the same text
// at every site (keys are compared as text): UTC, ISO dates, round-trip
// floats, hex bytea.
var CanonicalParams = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO, MDY",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "3",
	"bytea_output":       "hex",
}
