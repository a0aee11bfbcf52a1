package parked

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoEntry marks an id with no parked entry.
var ErrNoEntry = errors.New("no parked entry")

// ErrNotReplayable marks a parked entry that Replay refuses to write: a
// transport message, a truncation, a change that would count a counter's
// increment again or guess a value the origin did not send, a row without
// the local primary key.
var ErrNotReplayable = errors.New("cannot be replayed")

// ReasonWidth is how many characters of a reason ShortReason keeps.
const ReasonWidth = 80

// ShortReason is a parked entry's reason as listings and messages show it:
// on one line, cut to ReasonWidth characters (ending in "…" when cut).
func ShortReason(reason string) string {
	s := strings.Join(strings.Fields(reason), " ")
	if utf8.RuneCountInString(s) <= ReasonWidth {
		return s
	}
	return string([]rune(s)[:ReasonWidth-1]) + "…"
}

// Outcome is what Replay did.
type Outcome struct {
	What        string // the entry: "public.accounts key 1"
	Wrote       string // "inserted", "updated" or "deleted"; empty when there was nothing to write
	Nothing     string // why there was nothing to write, when Wrote is empty
	Table       string // the table replay wrote, schema.name
	Published   bool   // whether Table is in the publication: capture ships the write
	Publication string // the publication looked in
}

// String says what the replay did: "inserted public.accounts key 1", with
// a note when the table is not published.
func (o Outcome) String() string {
	s := o.Wrote + " " + o.What
	if o.Wrote == "" {
		s = o.What + ": " + o.Nothing
	}
	if !o.Published {
		s += fmt.Sprintf(" (note: %s is not in publication %s, so the write stays at this site)", o.Table, o.Publication)
	}
	return s
}

// Replay writes parked entry id on conn as a local write and deletes the
// entry, in one transaction; publication is the sidecar's (a table outside
// it is written all the same, and Outcome says so). It returns ErrNoEntry
// when there is no such entry, ErrNotReplayable when the entry cannot be
// written as it is, and the database's refusal (with its detail) when the
// write fails; the entry then stays parked. The entry is locked for the
// transaction, so that two replays of it cannot both write it.
func Replay(ctx context.Context, conn *pgx.Conn, publication string, id int64) (Outcome, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return Outcome{}, fmt.Errorf("begin: %w", err)
	}
	defer rollback(tx)
	p, ok, err := meta.LockParked(ctx, tx, id)
	if err != nil {
		return Outcome{}, err
	}
	if !ok {
		return Outcome{}, fmt.Errorf("%w %d", ErrNoEntry, id)
	}
	w, err := plan(ctx, tx, p, publication)
	if err != nil {
		return Outcome{}, err
	}
	o := Outcome{What: w.what, Table: w.table.String(), Published: w.published, Publication: publication}
	var inserted bool
	err = tx.QueryRow(ctx, w.sql, w.args...).Scan(&inserted)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		o.Nothing = w.absent
	case err != nil:
		return Outcome{}, fmt.Errorf("%s: %w", w.what, withDetail(err))
	case w.del:
		o.Wrote = "deleted"
	case inserted:
		o.Wrote = "inserted"
	default:
		o.Wrote = "updated"
	}
	if _, err := meta.DeleteParked(ctx, tx, []int64{id}); err != nil {
		return Outcome{}, err
	}
	if err := tx.Commit(ctx); err != nil {
		return Outcome{}, fmt.Errorf("%s: commit: %w", w.what, withDetail(err))
	}
	return o, nil
}

// Discard deletes the parked entries ids in one transaction: all of them,
// or, when one does not exist, none (ErrNoEntry, naming those missing).
func Discard(ctx context.Context, conn *pgx.Conn, ids []int64) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer rollback(tx)
	deleted, err := meta.DeleteParked(ctx, tx, ids)
	if err != nil {
		return err
	}
	var missing []string
	for _, id := range ids {
		if !slices.Contains(deleted, id) {
			missing = append(missing, strconv.FormatInt(id, 10))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w %s: nothing discarded", ErrNoEntry, strings.Join(missing, ", "))
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// rollback ends tx if it is still open; after a commit it does nothing.
func rollback(tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// withDetail adds the detail of a database error ("Key (email)=(x) already
// exists.") to its message.
func withDetail(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Detail != "" {
		return fmt.Errorf("%w: %s", err, strings.TrimSuffix(pe.Detail, "."))
	}
	return err
}

// inPublication tells whether t is in publication: capture ships its
// writes.
func inPublication(ctx context.Context, tx pgx.Tx, publication string, t *apply.Table) (bool, error) {
	var published bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)`,
		publication, t.Schema, t.Name).Scan(&published)
	if err != nil {
		return false, fmt.Errorf("describe table %s: publication %s: %w", t, publication, err)
	}
	return published, nil
}
