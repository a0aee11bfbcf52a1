package capture

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pglogrepl"
)

// OriginPrefix starts the name of every replication origin CasualDB's apply
// uses; capture does not ship transactions that carry one.
const OriginPrefix = "casualdb_"

// decodedTx is a whole transaction as it left the WAL, before versioning.
type decodedTx struct {
	tx *casualdb.Tx
	// applied marks a transaction written under a CasualDB replication
	// origin: followed, never shipped.
	applied bool
	// from and fromLSN, for an applied transaction: the site whose
	// transaction apply wrote and its commit LSN there (the last one, when
	// apply wrote several in one local transaction).
	from    casualdb.SiteID
	fromLSN uint64
	// watermark, when tx is nil: every transaction ending at or before it has
	// been handed over.
	watermark uint64
}

// catalog describes relations; the reader implements it with a query on a
// normal connection.
type catalog interface {
	describe(ctx context.Context, m *pglogrepl.RelationMessage) (rel casualdb.Relation, claimColumns []string, err error)
}

// decoder assembles pgoutput messages into transactions. Relation messages
// are re-sent per session and after DDL, so they are cached by relation id.
type decoder struct {
	cat      catalog
	counters map[string][]string // counter columns by table
	merge    map[string]bool     // tables whose columns merge one by one
	// noDeltas counts changes of counter tables whose deltas could not be
	// computed (see deltas): their counters replicate as values.
	noDeltas  *atomic.Uint64
	relations map[uint32]casualdb.Relation
	// claimCols are, by relation id, the columns of the relation's unique
	// indexes other than the primary key (see reader.describe).
	claimCols map[uint32][]string
	cur       *decodedTx
	origin    string
	originLSN uint64
	// applying is set within a transaction that apply wrote: its row
	// changes are skipped undecoded (PostgreSQL 15's pgoutput cannot leave
	// them out, but nothing here needs them: apply tells capture what it
	// recorded).
	applying bool
}

func newDecoder(cat catalog, counters map[string][]string, merge map[string]bool, noDeltas *atomic.Uint64) *decoder {
	return &decoder{cat: cat, counters: counters, merge: merge, noDeltas: noDeltas, relations: map[uint32]casualdb.Relation{}, claimCols: map[uint32][]string{}}
}

// inTx reports whether a transaction is open.
func (d *decoder) inTx() bool { return d.cur != nil }

// decode consumes one pgoutput message; it returns a transaction on Commit.
func (d *decoder) decode(ctx context.Context, data []byte) (*decodedTx, error) {
	if d.applying && len(data) > 0 {
		switch data[0] {
		case 'I', 'U', 'D', 'T':
			return nil, nil
		}
	}
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("parse pgoutput message: %w", err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		rel, claimCols, err := d.cat.describe(ctx, m)
		if err != nil {
			return nil, err
		}
		d.relations[m.RelationID] = rel
		d.claimCols[m.RelationID] = claimCols
	case *pglogrepl.BeginMessage:
		// Reset the origin at every Begin: the Origin message follows Begin
		// only for transactions that have one.
		d.origin, d.originLSN, d.applying = "", 0, false
		d.cur = &decodedTx{tx: &casualdb.Tx{Xid: m.Xid, CommitTime: m.CommitTime, Relations: map[string]casualdb.Relation{}}}
	case *pglogrepl.OriginMessage:
		d.origin, d.originLSN = m.Name, uint64(m.CommitLSN)
		d.applying = strings.HasPrefix(m.Name, OriginPrefix)
	case *pglogrepl.InsertMessage:
		rel, err := d.relation(m.RelationID)
		if err != nil {
			return nil, err
		}
		vals := tupleValues(m.Tuple, nil)
		deltas := d.deltas(rel, nil, vals, true)
		d.add(rel, casualdb.Change{Table: rel.Table, Op: casualdb.OpInsert, Key: keyOf(rel, vals), Values: vals, Deltas: deltas, ClaimColumns: d.claimCols[m.RelationID]})
	case *pglogrepl.UpdateMessage:
		rel, err := d.relation(m.RelationID)
		if err != nil {
			return nil, err
		}
		var old []casualdb.Value
		if m.OldTuple != nil {
			old = tupleValues(m.OldTuple, nil)
		}
		// With REPLICA IDENTITY FULL the old tuple carries every value,
		// TOASTed ones inlined: fill unchanged columns from it.
		var fill []casualdb.Value
		if m.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld {
			fill = old
		}
		vals := tupleValues(m.NewTuple, fill)
		key := keyOf(rel, vals)
		if old != nil {
			if oldKey := keyOf(rel, old); casualdb.KeyString(oldKey) != casualdb.KeyString(key) {
				// The primary key changed: the old row is gone.
				d.add(rel, casualdb.Change{Table: rel.Table, Op: casualdb.OpDelete, Key: oldKey})
			}
		}
		full := m.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld
		deltas := d.deltas(rel, old, vals, full)
		ch := casualdb.Change{Table: rel.Table, Op: casualdb.OpUpdate, Key: key, Values: vals, Deltas: deltas, ClaimColumns: d.claimCols[m.RelationID]}
		if d.merge[rel.Table] && full {
			ch.Changed = map[string]bool{}
			for i, col := range rel.Columns {
				if i < len(old) && i < len(vals) && old[i] != vals[i] {
					ch.Changed[col.Name] = true
				}
			}
		}
		d.add(rel, ch)
	case *pglogrepl.DeleteMessage:
		rel, err := d.relation(m.RelationID)
		if err != nil {
			return nil, err
		}
		d.add(rel, casualdb.Change{Table: rel.Table, Op: casualdb.OpDelete, Key: keyOf(rel, tupleValues(m.OldTuple, nil))})
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			rel, err := d.relation(id)
			if err != nil {
				return nil, err
			}
			d.add(rel, casualdb.Change{Table: rel.Table, Op: casualdb.OpTruncate})
		}
	case *pglogrepl.CommitMessage:
		if d.cur == nil {
			return nil, fmt.Errorf("decode commit at %s: no transaction open", m.CommitLSN)
		}
		out := d.cur
		d.cur = nil
		out.tx.LSN = uint64(m.TransactionEndLSN)
		out.tx.CommitTime = m.CommitTime
		if site, ok := strings.CutPrefix(d.origin, OriginPrefix); ok {
			out.applied, out.from, out.fromLSN = true, casualdb.SiteID(site), d.originLSN
		}
		return out, nil
	case *pglogrepl.TypeMessage, *pglogrepl.LogicalDecodingMessage:
	default:
		return nil, fmt.Errorf("decode pgoutput: unexpected message %T", msg)
	}
	return nil, nil
}

// deltas returns by how much a change moved the counter columns of its
// table: new minus old (old is zero for an insert, haveOld). NULL counts as
// zero. Without the old row (REPLICA IDENTITY not FULL), or when a value is
// not a finite decimal, the change has no deltas: its counters replicate as
// plain values (last writer wins), and noDeltas counts it.
func (d *decoder) deltas(rel casualdb.Relation, old, vals []casualdb.Value, haveOld bool) map[string]string {
	cols := d.counters[rel.Table]
	if len(cols) == 0 {
		return nil
	}
	if !haveOld {
		d.noDeltas.Add(1)
		return nil
	}
	out := make(map[string]string, len(cols))
	for _, name := range cols {
		i := slices.IndexFunc(rel.Columns, func(c casualdb.Column) bool { return c.Name == name })
		if i < 0 || i >= len(vals) {
			d.noDeltas.Add(1)
			return nil
		}
		from := "0"
		if i < len(old) && !old[i].Null && !old[i].Unchanged {
			from = old[i].Text
		}
		to := "0"
		if !vals[i].Null && !vals[i].Unchanged {
			to = vals[i].Text
		}
		delta, err := SubDecimal(to, from)
		if err != nil {
			d.noDeltas.Add(1)
			return nil
		}
		// Zero too: the receiver must know every counter column, so as
		// never to overwrite one with this site's value.
		out[name] = delta
	}
	return out
}

func (d *decoder) relation(id uint32) (casualdb.Relation, error) {
	rel, ok := d.relations[id]
	if !ok {
		return rel, fmt.Errorf("decode change: relation %d was never described", id)
	}
	return rel, nil
}

func (d *decoder) add(rel casualdb.Relation, c casualdb.Change) {
	if d.cur == nil {
		return
	}
	d.cur.tx.Relations[rel.Table] = rel
	d.cur.tx.Changes = append(d.cur.tx.Changes, c)
}

// tupleValues converts a pgoutput tuple; fill supplies values of unchanged
// TOASTed columns when known.
func tupleValues(t *pglogrepl.TupleData, fill []casualdb.Value) []casualdb.Value {
	if t == nil {
		return nil
	}
	out := make([]casualdb.Value, len(t.Columns))
	for i, c := range t.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			out[i] = casualdb.Value{Null: true}
		case pglogrepl.TupleDataTypeToast:
			if i < len(fill) && !fill[i].Unchanged {
				out[i] = fill[i]
			} else {
				out[i] = casualdb.Value{Unchanged: true}
			}
		default:
			out[i] = casualdb.Value{Text: string(c.Data)}
		}
	}
	return out
}

func keyOf(rel casualdb.Relation, vals []casualdb.Value) []string {
	idx := rel.KeyColumns()
	key := make([]string, 0, len(idx))
	for _, i := range idx {
		if i < len(vals) {
			key = append(key, vals[i].Text)
		}
	}
	return key
}

// commitMicros is the HLC seed of a transaction.
func commitMicros(t time.Time) int64 { return t.UnixMicro() }
