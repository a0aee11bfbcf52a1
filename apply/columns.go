package apply

import (
	"context"
	"fmt"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// RuleColumns names the merge of concurrent versions of a row whose table
// merges column by column: each column keeps its own last writer.
const RuleColumns = "column_merge"

// mergeColumns applies an incoming insert or update to a present row of a
// table whose columns merge one by one: every column takes the incoming
// value if the incoming column version (c.Columns) is the later one, and
// keeps its own otherwise; counter columns add their increments. d is the
// row-level decision, which keeps the row's version, clock and floor.
func (w *txWriter) mergeColumns(ctx context.Context, im inMsg, lt *localTable, c *casualdb.Change, st *rowState, rk meta.RowKey, d conflict.RowDecision) error {
	rel := im.tx.Relations[c.Table]
	cols := make(map[string]casualdb.Stamp, len(rel.Columns))
	for name, s := range st.rv.Columns {
		cols[name] = s
	}
	// A column's claim (unique indexes) follows its value: taken with the
	// incoming value, kept with the local one.
	var claims map[string]casualdb.Claim
	if len(st.rv.Claims) > 0 || len(c.Claims) > 0 {
		claims = make(map[string]casualdb.Claim, len(c.Claims))
		for name, cl := range st.rv.Claims {
			claims[name] = cl
		}
	}
	def := st.rv.Version.Stamp() // columns recorded before the table merged by column
	var sets []string
	args := keyArgs(c.Key)
	took := 0
	for i, col := range rel.Columns {
		name := pgx.Identifier{col.Name}.Sanitize()
		if delta, ok := c.Deltas[col.Name]; ok {
			sets = append(sets, addDeltaSQL(name, delta, &args))
			continue
		}
		in, ok := c.Columns[col.Name]
		if !ok {
			continue
		}
		cur, ok := cols[col.Name]
		if !ok {
			cur = def
		}
		if !cur.Less(in) {
			continue
		}
		if c.Values[i].Unchanged {
			return w.park(ctx, im, c, fmt.Errorf("%w: column %s; set REPLICA IDENTITY FULL on %s to ship such values", casualdb.ErrUnchangedToast, col.Name, c.Table))
		}
		cols[col.Name] = in
		if cl, ok := c.Claims[col.Name]; ok {
			claims[col.Name] = cl
		}
		took++
		args = append(args, textArg(c.Values[i]))
		sets = append(sets, fmt.Sprintf("%s = CAST($%d::text AS %s)", name, len(args), lt.cols[col.Name]))
	}
	if d.Outcome == conflict.Conflict {
		dd := d.Decision
		dd.Rule, dd.Apply = RuleColumns, took > 0
		if err := w.logConflict(ctx, lt, im, c, st, dd); err != nil {
			return err
		}
		w.res.conflicts++
	}
	rv := meta.RowVersion{Version: d.Stored, Floor: d.Floor, Columns: cols, Claims: claims, Xmin: st.xmin, OriginLSN: st.rv.OriginLSN, FloorLSNs: st.rv.FloorLSNs}
	if d.Stored.Stamp() == c.Version.Stamp() {
		rv.OriginLSN = im.tx.LSN
	}
	if len(sets) > 0 {
		q := fmt.Sprintf("UPDATE %s SET %s WHERE %s RETURNING xmin::text", lt.ident, strings.Join(sets, ", "), lt.keyMatch(1))
		xmin, ok, err := w.returningXmin(ctx, im, c, q, args)
		if err != nil || !ok {
			return err
		}
		st.xmin, rv.Xmin = xmin, xmin
		w.res.changes++
	}
	st.rv = &rv
	w.written[rk] = rv
	return nil
}
