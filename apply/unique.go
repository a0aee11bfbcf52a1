package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// RuleUnique names the resolution of two rows (different primary keys) that
// claim the same value of another unique constraint: the earlier claim
// keeps the value at every site (conflict.EarlierClaim).
const RuleUnique = conflict.RuleUnique

// errUnresolved reports a unique violation resolveUnique cannot settle (an
// expression or partial index, or no single holder): the change is parked.
var errUnresolved = errors.New("unique violation not resolvable by version")

// resolveUnique settles a violation of unique index index (not the primary
// key) by an incoming insert or update c: it finds the local row holding the
// value, and keeps whichever of the two claimed it first: the earlier claim
// (conflict.ClaimOf over the index's columns: when each row's value was set,
// as its origin stamped it, not the row's current version, which later
// updates move and which sites meet at different times). The loser is logged
// in the conflict log and parked whole. When the incoming row wins, the
// local holder is deleted here (under apply's replication origin: every
// site decides the same by itself) and retry writes the incoming row. When
// it loses, its row is removed here too if it is present (an update into
// the value: at the sites that met the other claim later, the loser was the
// holder and was removed), and its version stays the row's version, as at
// every site (suppressed: see removeLoser).
// It runs in careful mode, after the failed write was rolled back to its
// savepoint.
func (w *txWriter) resolveUnique(ctx context.Context, im inMsg, c *casualdb.Change, index string, retry func() error) error {
	lt := w.tables[c.Table]
	rel := im.tx.Relations[c.Table]
	var cols []string
	err := w.tx.QueryRow(ctx, `
		SELECT coalesce(array_agg(a.attname::text ORDER BY k.n), '{}')
		FROM pg_index i
		JOIN pg_class ic ON ic.oid = i.indexrelid
		JOIN unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, n) ON true
		LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.att
		WHERE ic.relname = $1 AND i.indrelid = $2::regclass AND i.indpred IS NULL AND i.indexprs IS NULL`,
		index, lt.ident).Scan(&cols)
	if err != nil {
		return fmt.Errorf("describe unique index %s: %w", index, err)
	}
	if len(cols) == 0 {
		return fmt.Errorf("%w: index %s is partial or on expressions", errUnresolved, index)
	}
	var conds []string
	var args []any
	for _, col := range cols {
		i := -1
		for j, rc := range rel.Columns {
			if rc.Name == col {
				i = j
			}
		}
		if i < 0 || c.Values[i].Unchanged {
			return fmt.Errorf("%w: column %s of index %s is not in the change", errUnresolved, col, index)
		}
		args = append(args, textArg(c.Values[i]))
		conds = append(conds, fmt.Sprintf("%s = CAST($%d::text AS %s)", pgx.Identifier{col}.Sanitize(), len(args), lt.cols[col]))
	}
	args = append(args, keyArgs(c.Key)...)
	var (
		holderKey []string
		holderRow string
	)
	keyVals := make([]string, len(lt.keys))
	dest := []any{&holderRow}
	for i := range keyVals {
		dest = append(dest, &keyVals[i])
	}
	q := fmt.Sprintf("SELECT row_to_json(t)::text, %s FROM %s t WHERE %s AND NOT %s FOR UPDATE",
		lt.keyText(), lt.ident, strings.Join(conds, " AND "), lt.keyMatch(len(cols)+1))
	if err := w.tx.QueryRow(ctx, q, args...).Scan(dest...); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: no other row holds the value of index %s", errUnresolved, index)
		}
		return fmt.Errorf("find the row holding index %s's value: %w", index, err)
	}
	holderKey = keyVals
	hk := meta.RowKey{Table: c.Table, Key: casualdb.KeyString(holderKey)}
	hv, ok := w.written[hk] // written earlier in this transaction, not saved yet
	if !ok {
		// The holder may be a local write capture has not versioned yet.
		if err := w.waitCapture(ctx); err != nil {
			return err
		}
		vs, err := w.loadVersions(ctx, []meta.RowKey{hk})
		if err != nil {
			return err
		}
		if hv, ok = vs[hk]; !ok {
			return fmt.Errorf("%w: the row holding index %s's value has no version", errUnresolved, index)
		}
	}
	incoming := casualdb.Change{Table: c.Table, Op: c.Op, Key: c.Key, Values: c.Values, Version: c.Version, Claims: c.Claims}
	remoteRow := rowImage(rel, c)
	holder := conflict.Claimant{Claim: conflict.ClaimOf(hv.Claims, cols, hv.Version.Stamp()), Key: hk.Key}
	claimant := conflict.Claimant{Claim: conflict.ClaimOf(c.Claims, cols, c.Version.Stamp()), Key: casualdb.KeyString(c.Key)}
	if conflict.EarlierClaim(holder, claimant) {
		// The local holder claimed it first: the incoming row loses.
		if err := meta.LogConflict(ctx, w.tx, meta.Conflict{Table: c.Table, Key: claimant.Key, Rule: RuleUnique, Winner: "local",
			LocalVersion: hv.Version, RemoteVersion: c.Version, LocalRow: json.RawMessage(holderRow), RemoteRow: remoteRow}); err != nil {
			return err
		}
		w.res.conflicts++
		if err := w.removeLoser(ctx, im, c); err != nil {
			return err
		}
		if err := w.park(ctx, im, &incoming, fmt.Errorf("unique index %s: the value is held by key %s, which claimed it first (%s)", index, hk.Key, RuleUnique)); err != nil {
			return err
		}
		return errParked
	}
	// The incoming row claimed it first: the holder goes, whole, to the
	// conflict log and the parked changes, and the incoming row is written.
	if err := meta.LogConflict(ctx, w.tx, meta.Conflict{Table: c.Table, Key: hk.Key, Rule: RuleUnique, Winner: "remote",
		LocalVersion: hv.Version, RemoteVersion: c.Version, LocalRow: json.RawMessage(holderRow), RemoteRow: remoteRow}); err != nil {
		return err
	}
	w.res.conflicts++
	payload, err := json.Marshal(&meta.RemovedRow{Row: json.RawMessage(holderRow), Version: hv.Version})
	if err != nil {
		return fmt.Errorf("park holder: %w", err)
	}
	if err := meta.Park(ctx, w.tx, meta.Parked{Origin: hv.Version.Origin, Table: c.Table, Key: hk.Key, Payload: payload,
		Reason: fmt.Sprintf("unique index %s: key %s claimed the value first (%s); this row was removed here", index, claimant.Key, RuleUnique)}); err != nil {
		return err
	}
	w.res.parked++
	if _, err := w.tx.Exec(ctx, "DELETE FROM "+lt.ident+" WHERE "+lt.keyMatch(1), keyArgs(holderKey)...); err != nil {
		return fmt.Errorf("remove the later claim %s: %w", hk.Key, err)
	}
	// Suppressed, not deleted: see removeLoser.
	hv.Xmin = 0
	w.written[hk] = hv
	if st, ok := w.state[hk]; ok {
		st.present, st.rv = false, &hv
	}
	return retry()
}

// removeLoser records the version of an incoming change that lost a unique
// value, and deletes the row here if it is present (an update into a value
// another row claimed first): so the loser ends the same at every site,
// whichever row each met first.
//
// The loser is suppressed, not deleted: its version stays the row's version,
// alive (not a tombstone), while the row is absent. So last-writer-wins goes
// on as if the row were there: a later version of the row comes back (and
// is judged by its own claims), an earlier concurrent one arriving late
// stays out, as it would have lost to the loser. A tombstone would let that
// earlier version back in (an alive write over a tombstone whose floor it
// covers brings the row back), and the sites that met the loser's version
// before the earlier one (and never removed anything) would disagree.
func (w *txWriter) removeLoser(ctx context.Context, im inMsg, c *casualdb.Change) error {
	lt := w.tables[c.Table]
	rk := meta.RowKey{Table: c.Table, Key: casualdb.KeyString(c.Key)}
	lost := meta.RowVersion{Version: c.Version, Claims: c.Claims, OriginLSN: im.tx.LSN}
	lost.Version.VC = c.Version.VC.Clone()
	st := w.state[rk]
	if st != nil && st.rv != nil {
		lost.Version.VC = conflict.Join(st.rv.Version.VC, c.Version.VC)
		lost.Floor = st.rv.Floor
	}
	if st != nil && st.present {
		if _, err := w.tx.Exec(ctx, "DELETE FROM "+lt.ident+" WHERE "+lt.keyMatch(1), keyArgs(c.Key)...); err != nil {
			return fmt.Errorf("remove the later claim %s: %w", rk.Key, err)
		}
	}
	w.written[rk] = lost
	if st != nil {
		st.present, st.rv = false, &lost
	}
	return nil
}

// rowImage renders the new row of c as a JSON object for the conflict log.
func rowImage(rel casualdb.Relation, c *casualdb.Change) json.RawMessage {
	if c.Op == casualdb.OpDelete {
		return nil
	}
	img := map[string]any{}
	for i, col := range rel.Columns {
		if i >= len(c.Values) {
			break
		}
		switch v := c.Values[i]; {
		case v.Null:
			img[col.Name] = nil
		case v.Unchanged:
			img[col.Name] = "(unchanged TOAST value)"
		default:
			img[col.Name] = v.Text
		}
	}
	b, _ := json.Marshal(img)
	return b
}
