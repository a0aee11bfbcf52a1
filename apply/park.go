package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5/pgconn"
)

// errParked reports that guard parked the change.
var errParked = errors.New("change parked")

// guard runs one row write. In careful mode it runs under a savepoint, and a
// write the database refuses for this row's sake is parked, or, for a
// collision on a unique index other than the primary key, resolved (see
// resolveUnique).
func (w *txWriter) guard(ctx context.Context, im inMsg, c *casualdb.Change, f func() error) error {
	if !w.careful {
		return f()
	}
	ferr, err := w.savepoint(ctx, f)
	if err != nil || ferr == nil {
		return err
	}
	if !parkable(ferr) {
		return ferr
	}
	var pe *pgconn.PgError
	if errors.As(ferr, &pe) && pe.Code == "23505" {
		if st := w.state[meta.RowKey{Table: c.Table, Key: casualdb.KeyString(c.Key)}]; (st == nil || !st.present) && w.keyTaken(ctx, c) {
			// The row was absent, and its primary key was taken by a
			// local insert that committed meanwhile: a race, not a bad
			// row. (An update of a present row into a value another row
			// holds is a unique collision, resolved below: it used to be
			// taken for a race and retried for ever.)
			return fmt.Errorf("%w: %v", errRace, ferr)
		}
		if c.Op != casualdb.OpDelete && pe.ConstraintName != "" {
			rerr, err := w.savepoint(ctx, func() error { return w.resolveUnique(ctx, im, c, pe.ConstraintName, f) })
			switch {
			case err != nil:
				return err
			case rerr == nil || errors.Is(rerr, errParked):
				return rerr
			case errors.Is(rerr, errUnresolved) || parkable(rerr):
				ferr = fmt.Errorf("%w (%v)", ferr, rerr)
			default:
				return rerr
			}
		}
	}
	if err := w.park(ctx, im, c, ferr); err != nil {
		return err
	}
	return errParked
}

// savepoint runs f under a savepoint: released when f succeeds or parked
// the change, rolled back to otherwise. ferr is f's error; err is the
// savepoint's own.
func (w *txWriter) savepoint(ctx context.Context, f func() error) (ferr, err error) {
	if _, err := w.tx.Exec(ctx, "SAVEPOINT casualdb_change"); err != nil {
		return nil, fmt.Errorf("savepoint: %w", err)
	}
	ferr = f()
	if ferr == nil || errors.Is(ferr, errParked) {
		if _, err := w.tx.Exec(ctx, "RELEASE SAVEPOINT casualdb_change"); err != nil {
			return nil, fmt.Errorf("release savepoint: %w", err)
		}
		return ferr, nil
	}
	if _, err := w.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT casualdb_change"); err != nil {
		return nil, fmt.Errorf("rollback to savepoint: %w", err)
	}
	return ferr, nil
}

func (w *txWriter) keyTaken(ctx context.Context, c *casualdb.Change) bool {
	lt := w.tables[c.Table]
	var one int
	err := w.tx.QueryRow(ctx, "SELECT 1 FROM "+lt.ident+" WHERE "+lt.keyMatch(1), keyArgs(c.Key)...).Scan(&one)
	return err == nil
}

// parkable tells the errors that belong to the row (constraints, bad
// values, missing columns) from those that belong to the moment (deadlocks,
// lost connections), which a retry resolves.
func parkable(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23", "42", "2F", "P0":
		return true
	}
	return false
}

func isRetryable(err error) bool {
	if errors.Is(err, errRace) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return true // the connection is fine; the transaction is retried
	}
	return false
}

func (w *txWriter) park(ctx context.Context, im inMsg, c *casualdb.Change, cause error) error {
	payload, err := json.Marshal(&meta.ParkedChange{Relation: im.tx.Relations[c.Table], Change: *c, CommitTime: im.tx.CommitTime})
	if err != nil {
		return fmt.Errorf("park change: %w", err)
	}
	p := meta.Parked{Origin: im.origin, Seq: im.seq, LSN: im.tx.LSN, Table: c.Table, Key: casualdb.KeyString(c.Key), Reason: cause.Error(), Payload: payload}
	if err := meta.Park(ctx, w.tx, p); err != nil {
		return err
	}
	w.a.log.Warn("parked change", "origin", im.origin, "table", c.Table, "key", p.Key, "reason", cause)
	w.res.parked++
	return nil
}
