package casualdb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"sync"
	"time"
)

// The wire encoding of a Tx. Every transaction is encoded once by capture
// and decoded at every peer (and the hot path of both is this code), so it
// is a compact binary form rather than JSON, which cost a fifth of the
// sidecars' CPU:
//
//	magic 0xC7, version 1 (2 when a change carries claims)
//	origin, LSN, xid, commit time (µs)
//	deps:      n, (site, lsn)*            sorted by site
//	relations: n, (len, schema, name, ncols, (name, type, key)*)*
//	changes:   n, change*
//
// A change is its relation's index, its op, a flags byte, its key (omitted
// for inserts and updates whose key equals the key columns of their values),
// its values (tag: text, null or unchanged), its version (HLC, origin,
// vector clock) and its optional deltas, column stamps, floor and claims
// (column, stamp, 8-byte little-endian hash), each sorted. Integers are
// varints; strings are a length and their bytes.
//
// Version 2 differs from version 1 only by the claims flag. A transaction
// without claims is written as version 1, which sidecars that predate claims
// read; one with claims as version 2, which they refuse with a clear error
// (and park) instead of misreading the claims as the next change.
//
// UnmarshalTx also reads JSON, the encoding of earlier versions, so that
// outboxes and inboxes written before an upgrade still drain.
const (
	wireMagic     byte = 0xC7
	wireVersion   byte = 2 // the newest version this sidecar reads and writes
	wireVersionV1 byte = 1 // no claims
)

// Change flags.
const (
	flagKeyDerived byte = 1 << iota // key = values at the key columns
	flagDeltas
	flagColumns
	flagFloor
	flagClaims // wire version 2
)

// Value tags.
const (
	tagText byte = iota
	tagNull
	tagUnchanged
)

// errShort reports an encoding that ends too early.
var errShort = errors.New("truncated")

// Marshal encodes t for the transport.
func (t *Tx) Marshal() ([]byte, error) {
	return t.AppendBinary(make([]byte, 0, 256))
}

// AppendBinary appends t's wire encoding to b.
func (t *Tx) AppendBinary(b []byte) ([]byte, error) {
	version := wireVersionV1
	for i := range t.Changes {
		if len(t.Changes[i].Claims) > 0 {
			version = wireVersion
			break
		}
	}
	b = append(b, wireMagic, version)
	b = appendString(b, string(t.Origin))
	b = binary.AppendUvarint(b, t.LSN)
	b = binary.AppendUvarint(b, uint64(t.Xid))
	b = binary.AppendVarint(b, t.CommitTime.UnixMicro())
	b = appendSiteCounts(b, t.Deps)

	// Relations in a fixed order, so that equal transactions encode
	// equally; changes refer to them by index.
	names := make([]string, 0, len(t.Relations))
	for name := range t.Relations {
		names = append(names, name)
	}
	sort.Strings(names)
	index := make(map[string]int, len(names))
	b = binary.AppendUvarint(b, uint64(len(names)))
	for i, name := range names {
		rel := t.Relations[name]
		if rel.Table != TableName(rel.Schema, rel.Name) || name != rel.Table {
			return nil, fmt.Errorf("marshal tx %s: relation %q is named %q (schema %q, name %q)", t.ID(), name, rel.Table, rel.Schema, rel.Name)
		}
		index[name] = i
		b = appendRelation(b, rel)
	}

	b = binary.AppendUvarint(b, uint64(len(t.Changes)))
	for i := range t.Changes {
		c := &t.Changes[i]
		ri, ok := index[c.Table]
		if !ok {
			return nil, fmt.Errorf("marshal tx %s: change %d: table %q not described", t.ID(), i, c.Table)
		}
		b = binary.AppendUvarint(b, uint64(ri))
		if len(c.Op) != 1 {
			return nil, fmt.Errorf("marshal tx %s: change %d: bad op %q", t.ID(), i, c.Op)
		}
		b = append(b, c.Op[0])
		var flags byte
		if keyDerivable(t.Relations[c.Table], c) {
			flags |= flagKeyDerived
		}
		if len(c.Deltas) > 0 {
			flags |= flagDeltas
		}
		if len(c.Columns) > 0 {
			flags |= flagColumns
		}
		if len(c.Floor) > 0 {
			flags |= flagFloor
		}
		if len(c.Claims) > 0 {
			flags |= flagClaims
		}
		b = append(b, flags)
		if flags&flagKeyDerived == 0 {
			b = binary.AppendUvarint(b, uint64(len(c.Key)))
			for _, k := range c.Key {
				b = appendString(b, k)
			}
		}
		b = binary.AppendUvarint(b, uint64(len(c.Values)))
		for _, v := range c.Values {
			switch {
			case v.Unchanged:
				b = append(b, tagUnchanged)
			case v.Null:
				b = append(b, tagNull)
			default:
				b = append(b, tagText)
				b = appendString(b, v.Text)
			}
		}
		b = appendStamp(b, c.Version.Stamp())
		b = appendSiteCounts(b, c.Version.VC)
		if flags&flagDeltas != 0 {
			cols := sortedKeys(c.Deltas)
			b = binary.AppendUvarint(b, uint64(len(cols)))
			for _, col := range cols {
				b = appendString(b, col)
				b = appendString(b, c.Deltas[col])
			}
		}
		if flags&flagColumns != 0 {
			cols := sortedKeys(c.Columns)
			b = binary.AppendUvarint(b, uint64(len(cols)))
			for _, col := range cols {
				b = appendString(b, col)
				b = appendStamp(b, c.Columns[col])
			}
		}
		if flags&flagFloor != 0 {
			b = appendSiteCounts(b, c.Floor)
		}
		if flags&flagClaims != 0 {
			cols := sortedKeys(c.Claims)
			b = binary.AppendUvarint(b, uint64(len(cols)))
			for _, col := range cols {
				cl := c.Claims[col]
				b = appendString(b, col)
				b = appendStamp(b, cl.Stamp)
				b = binary.LittleEndian.AppendUint64(b, cl.Hash)
			}
		}
	}
	return b, nil
}

// keyDerivable tells whether c's key is its values at rel's key columns, so
// that the encoding can leave it out.
func keyDerivable(rel Relation, c *Change) bool {
	if (c.Op != OpInsert && c.Op != OpUpdate) || len(c.Values) != len(rel.Columns) {
		return false
	}
	n := 0
	for i, col := range rel.Columns {
		if !col.Key {
			continue
		}
		v := c.Values[i]
		if n >= len(c.Key) || v.Null || v.Unchanged || v.Text != c.Key[n] {
			return false
		}
		n++
	}
	return n == len(c.Key) && n > 0
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendStamp(b []byte, s Stamp) []byte {
	b = binary.AppendVarint(b, s.HLC.Wall)
	b = binary.AppendUvarint(b, uint64(s.HLC.Logical))
	return appendString(b, string(s.Origin))
}

// appendSiteCounts encodes a map from site to count, sorted by site.
func appendSiteCounts[M ~map[SiteID]uint64](b []byte, m M) []byte {
	b = binary.AppendUvarint(b, uint64(len(m)))
	if len(m) == 0 {
		return b
	}
	sites := make([]SiteID, 0, len(m))
	for s := range m {
		sites = append(sites, s)
	}
	slices.Sort(sites)
	for _, s := range sites {
		b = appendString(b, string(s))
		b = binary.AppendUvarint(b, m[s])
	}
	return b
}

func appendRelation(b []byte, rel Relation) []byte {
	var body []byte
	body = appendString(body, rel.Schema)
	body = appendString(body, rel.Name)
	body = binary.AppendUvarint(body, uint64(len(rel.Columns)))
	for _, c := range rel.Columns {
		body = appendString(body, c.Name)
		body = appendString(body, c.Type)
		if c.Key {
			body = append(body, 1)
		} else {
			body = append(body, 0)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// UnmarshalTx decodes and checks a transaction from the transport, in the
// binary encoding or in JSON. Anything that is not a well-formed Tx gives an
// error wrapping ErrGarbled.
func UnmarshalTx(b []byte) (*Tx, error) {
	return defaultDecoder.Decode(b)
}

// defaultDecoder serves UnmarshalTx; its relation cache is shared.
var defaultDecoder = NewDecoder()

// Decoder decodes transactions, sharing the descriptions of relations that
// repeat from one transaction to the next (most of a small transaction's
// bytes describe its tables). Safe for concurrent use.
type Decoder struct {
	mu   sync.Mutex
	rels map[string]Relation // by encoded form
}

// maxCachedRelations bounds a Decoder's relation cache; it is emptied when
// full (tables are few; a flood of distinct ones is garbage anyway).
const maxCachedRelations = 4096

// maxCachedRelationBytes bounds the encoded size of a description the cache
// keeps (a table of 400 columns with 40 bytes of name and type each fits); a
// larger one is decoded each time it comes. With maxCachedRelations, the
// cache holds at most about 128 MB whatever a peer sends, and in practice a
// few tables' worth.
const maxCachedRelationBytes = 16 << 10

// NewDecoder returns a Decoder with an empty relation cache.
func NewDecoder() *Decoder { return &Decoder{rels: map[string]Relation{}} }

// Decode is UnmarshalTx with d's relation cache.
func (d *Decoder) Decode(b []byte) (*Tx, error) {
	var t *Tx
	var err error
	switch {
	case len(b) > 0 && b[0] == wireMagic:
		t, err = d.decodeBinary(b)
	case len(b) > 0 && b[0] == '{':
		t, err = decodeJSON(b)
	default:
		err = errors.New("neither the binary nor the JSON encoding of a transaction")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrGarbled, err)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// reader reads the binary encoding; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s: %w at %d bytes from the end", what, errShort, len(r.b))
	}
}

func (r *reader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint(what string) int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) byte(what string) byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.fail(what)
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) bytes(what string) []byte {
	n := r.uvarint(what)
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail(what)
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

// uint64 reads 8 bytes, little-endian.
func (r *reader) uint64(what string) uint64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.fail(what)
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) string(what string) string { return string(r.bytes(what)) }

// count reads a length of items that take at least min bytes each, and
// refuses one the rest of the input cannot hold (a forged length must not
// make the decoder allocate gigabytes).
func (r *reader) count(what string, min int) int {
	n := r.uvarint(what)
	if r.err != nil {
		return 0
	}
	if n > uint64(len(r.b)/max(min, 1)) {
		if r.err == nil {
			r.err = fmt.Errorf("%s: %d items do not fit in %d bytes", what, n, len(r.b))
		}
		return 0
	}
	return int(n)
}

func (r *reader) stamp(what string) Stamp {
	var s Stamp
	s.HLC.Wall = r.varint(what)
	l := r.uvarint(what)
	if l > math.MaxUint32 && r.err == nil {
		r.err = fmt.Errorf("%s: logical clock %d out of range", what, l)
	}
	s.HLC.Logical = uint32(l)
	s.Origin = SiteID(r.string(what))
	return s
}

func (r *reader) siteCounts(what string) map[SiteID]uint64 {
	n := r.count(what, 2)
	if n == 0 {
		return nil
	}
	m := make(map[SiteID]uint64, n)
	for i := 0; i < n && r.err == nil; i++ {
		s := SiteID(r.string(what))
		m[s] = r.uvarint(what)
	}
	return m
}

func (d *Decoder) decodeBinary(b []byte) (*Tx, error) {
	r := &reader{b: b[1:]}
	v := r.byte("version")
	if r.err == nil && v != wireVersion && v != wireVersionV1 {
		return nil, fmt.Errorf("encoding version %d is not known here (this sidecar reads %d and %d)", v, wireVersionV1, wireVersion)
	}
	t := &Tx{}
	t.Origin = SiteID(r.string("origin"))
	t.LSN = r.uvarint("lsn")
	xid := r.uvarint("xid")
	if xid > math.MaxUint32 && r.err == nil {
		r.err = fmt.Errorf("xid %d out of range", xid)
	}
	t.Xid = uint32(xid)
	t.CommitTime = time.UnixMicro(r.varint("commit time")).UTC()
	t.Deps = r.siteCounts("deps")

	nrel := r.count("relations", 3)
	rels := make([]Relation, nrel)
	t.Relations = make(map[string]Relation, nrel)
	for i := 0; i < nrel && r.err == nil; i++ {
		rels[i] = d.relation(r)
		if r.err == nil {
			t.Relations[rels[i].Table] = rels[i]
		}
	}

	nch := r.count("changes", 6)
	if nch > 0 {
		t.Changes = make([]Change, nch)
	}
	for i := 0; i < nch && r.err == nil; i++ {
		c := &t.Changes[i]
		ri := r.uvarint("change relation")
		if r.err != nil {
			break
		}
		if ri >= uint64(len(rels)) {
			return nil, fmt.Errorf("change %d: relation %d of %d", i, ri, len(rels))
		}
		rel := rels[ri]
		c.Table = rel.Table
		c.Op = opOf(r.byte("op"))
		flags := r.byte("flags")
		if flags&flagClaims != 0 && v < wireVersion && r.err == nil {
			return nil, fmt.Errorf("change %d: claims in an encoding of version %d", i, v)
		}
		if flags&flagKeyDerived == 0 {
			nk := r.count("key", 1)
			if nk > 0 {
				c.Key = make([]string, nk)
			}
			for k := 0; k < nk; k++ {
				c.Key[k] = r.string("key")
			}
		}
		nv := r.count("values", 1)
		if nv > 0 {
			c.Values = make([]Value, nv)
		}
		for k := 0; k < nv && r.err == nil; k++ {
			switch tag := r.byte("value tag"); tag {
			case tagText:
				c.Values[k].Text = r.string("value")
			case tagNull:
				c.Values[k].Null = true
			case tagUnchanged:
				c.Values[k].Unchanged = true
			default:
				if r.err == nil {
					return nil, fmt.Errorf("change %d: value tag %d", i, tag)
				}
			}
		}
		if flags&flagKeyDerived != 0 && r.err == nil {
			if len(c.Values) != len(rel.Columns) {
				return nil, fmt.Errorf("change %d: %d values for %d columns", i, len(c.Values), len(rel.Columns))
			}
			for k, col := range rel.Columns {
				if col.Key {
					c.Key = append(c.Key, c.Values[k].Text)
				}
			}
		}
		s := r.stamp("version")
		c.Version = Version{HLC: s.HLC, Origin: s.Origin, VC: r.siteCounts("vector clock")}
		if c.Version.VC == nil {
			c.Version.VC = VectorClock{}
		}
		if flags&flagDeltas != 0 {
			n := r.count("deltas", 2)
			c.Deltas = make(map[string]string, n)
			for k := 0; k < n && r.err == nil; k++ {
				col := r.string("delta column")
				c.Deltas[col] = r.string("delta")
			}
		}
		if flags&flagColumns != 0 {
			n := r.count("column versions", 4)
			c.Columns = make(map[string]Stamp, n)
			for k := 0; k < n && r.err == nil; k++ {
				col := r.string("column")
				c.Columns[col] = r.stamp("column version")
			}
		}
		if flags&flagFloor != 0 {
			c.Floor = r.siteCounts("floor")
		}
		if flags&flagClaims != 0 {
			n := r.count("claims", 12)
			c.Claims = make(map[string]Claim, n)
			for k := 0; k < n && r.err == nil; k++ {
				col := r.string("claim column")
				s := r.stamp("claim")
				c.Claims[col] = Claim{Stamp: s, Hash: r.uint64("claim hash")}
			}
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%d bytes after the transaction", len(r.b))
	}
	return t, nil
}

// opOf returns the op a byte names (an unknown one fails Validate).
func opOf(c byte) Op {
	switch Op([]byte{c}) {
	case OpInsert:
		return OpInsert
	case OpUpdate:
		return OpUpdate
	case OpDelete:
		return OpDelete
	case OpTruncate:
		return OpTruncate
	}
	return Op([]byte{c})
}

// relation reads one relation, from d's cache when the same bytes were
// decoded before.
func (d *Decoder) relation(r *reader) Relation {
	body := r.bytes("relation")
	if r.err != nil {
		return Relation{}
	}
	d.mu.Lock()
	rel, ok := d.rels[string(body)]
	d.mu.Unlock()
	if ok {
		return rel
	}
	br := &reader{b: body}
	rel.Schema = br.string("relation schema")
	rel.Name = br.string("relation name")
	rel.Table = TableName(rel.Schema, rel.Name)
	n := br.count("columns", 3)
	if n > 0 {
		rel.Columns = make([]Column, n)
	}
	for i := 0; i < n && br.err == nil; i++ {
		rel.Columns[i].Name = br.string("column name")
		rel.Columns[i].Type = br.string("column type")
		rel.Columns[i].Key = br.byte("column key") != 0
	}
	if br.err == nil && len(br.b) != 0 {
		br.err = fmt.Errorf("relation %s: %d bytes after it", rel.Table, len(br.b))
	}
	if br.err != nil {
		r.err = br.err
		return Relation{}
	}
	if len(body) > maxCachedRelationBytes {
		return rel // decoded each time: a peer's huge descriptions must not fill the cache
	}
	d.mu.Lock()
	if len(d.rels) >= maxCachedRelations {
		clear(d.rels)
	}
	d.rels[string(body)] = rel
	d.mu.Unlock()
	return rel
}
