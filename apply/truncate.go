package apply

import (
	"context"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
)

// truncate applies a remote TRUNCATE: rows whose version is older than the
// truncate go; rows written later (anywhere) stay.
func (w *txWriter) truncate(ctx context.Context, lt *localTable, c *casualdb.Change) error {
	// Write what this transaction decided so far before reading the table.
	if err := w.flush(ctx); err != nil {
		return err
	}
	if _, err := w.tx.Exec(ctx, "LOCK TABLE "+lt.ident+" IN SHARE ROW EXCLUSIVE MODE"); err != nil {
		return fmt.Errorf("lock %s for truncate: %w", lt.name, err)
	}
	if err := w.waitCapture(ctx); err != nil {
		return err
	}
	// Every local version in the database: the marker removes those it
	// supersedes there, and capture must not record one of them after.
	// Before this transaction writes versions of its own: the recorder
	// would wait for them (a second truncate in the same transaction can
	// still meet that: the wait is bounded, and the retry finds the
	// versions recorded).
	fctx, cancel := context.WithTimeout(ctx, flushTimeout)
	err := w.a.cfg.Capture.FlushVersions(fctx)
	cancel()
	if err != nil {
		return fmt.Errorf("wait for capture to record its versions: %w", err)
	}
	// Then record what this transaction decided so far.
	if err := w.saveWritten(ctx, w.tx); err != nil {
		return err
	}
	rows, err := w.tx.Query(ctx, "SELECT "+lt.keyText()+" FROM "+lt.ident)
	if err != nil {
		return fmt.Errorf("truncate %s: %w", lt.name, err)
	}
	var keys [][]string
	var rks []meta.RowKey
	for rows.Next() {
		vals := make([]string, len(lt.keys))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return fmt.Errorf("truncate %s: %w", lt.name, err)
		}
		keys = append(keys, vals)
		rks = append(rks, meta.RowKey{Table: lt.name, Key: casualdb.KeyString(vals)})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("truncate %s: %w", lt.name, err)
	}
	vs, err := meta.LoadVersions(ctx, w.tx, rks)
	if err != nil {
		return err
	}
	for i, k := range keys {
		if rv, ok := vs[rks[i]]; ok && !conflict.Less(rv.Version, c.Version) {
			continue // written after the truncate: it stays
		}
		if _, err := w.tx.Exec(ctx, "DELETE FROM "+lt.ident+" WHERE "+lt.keyMatch(1), keyArgs(k)...); err != nil {
			return fmt.Errorf("truncate %s: %w", lt.name, err)
		}
		if st, ok := w.state[rks[i]]; ok {
			st.present = false
		}
	}
	if err := meta.SaveTruncation(ctx, w.tx, lt.name, c.Version); err != nil {
		return err
	}
	if t, ok := w.raised[lt.name]; !ok || conflict.Less(t, c.Version) {
		w.raised[lt.name] = c.Version
	}
	w.a.truncsValid = false // read them again next time
	// The marker removed the versions it supersedes, those this
	// transaction recorded included.
	for k, rv := range w.all {
		if k.Table == lt.name && conflict.Less(rv.Version, c.Version) {
			delete(w.all, k)
		}
	}
	if t, ok := w.truncs[lt.name]; !ok || conflict.Less(t, c.Version) {
		w.truncs[lt.name] = c.Version
	}
	for k, st := range w.state {
		if k.Table == lt.name && st.rv != nil && conflict.Less(st.rv.Version, c.Version) {
			st.rv = nil
		}
	}
	w.res.changes++
	return nil
}

// flushTimeout bounds apply's wait for capture to record its versions.
const flushTimeout = 5 * time.Second
