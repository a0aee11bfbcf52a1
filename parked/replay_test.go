package parked_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/meta"
	"github.com/casualdb/casualdb/parked"
	"github.com/jackc/pgx/v5"
)

// site is a PostgreSQL with the casualdb schema, accounts (unique email,
// in publication casualdb) and notes (in no publication).
type site struct {
	conn *pgx.Conn
	ctx  context.Context
}

var accounts = casualdb.Relation{Table: "public.accounts", Schema: "public", Name: "accounts", Columns: []casualdb.Column{
	{Name: "id", Type: "integer", Key: true}, {Name: "email", Type: "text"}}}

func newSite(t *testing.T) *site {
	t.Helper()
	pg := pgtest.NewServer(t, "parked")
	s := &site{conn: pgtest.Connect(t, pg.DSN()), ctx: context.Background()}
	if err := meta.Install(s.ctx, s.conn); err != nil {
		t.Fatal(err)
	}
	pgtest.ExecAll(t, s.conn,
		`CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE)`,
		`CREATE TABLE notes (id int PRIMARY KEY, body text)`,
		`CREATE PUBLICATION casualdb FOR TABLE accounts`)
	return s
}

// park parks p as apply does and returns its id.
func (s *site) park(t *testing.T, p meta.Parked) int64 {
	t.Helper()
	if err := meta.Park(s.ctx, s.conn, p); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := s.conn.QueryRow(s.ctx, `SELECT max(id) FROM casualdb.parked`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// parkChange parks c of rel with the payload apply writes.
func (s *site) parkChange(t *testing.T, rel casualdb.Relation, c casualdb.Change) int64 {
	t.Helper()
	c.Table = rel.Table
	b, err := json.Marshal(&meta.ParkedChange{Relation: rel, Change: c, CommitTime: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return s.park(t, meta.Parked{Origin: "us1", Table: rel.Table, Key: casualdb.KeyString(c.Key), Reason: "x", Payload: b})
}

func (s *site) parkedIDs(t *testing.T) []int64 {
	t.Helper()
	list, err := meta.FindParked(s.ctx, s.conn, meta.ParkedFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, p := range list {
		ids = append(ids, p.ID)
	}
	slices.Sort(ids)
	return ids
}

func (s *site) email(t *testing.T, id int) string {
	t.Helper()
	var email string
	if err := s.conn.QueryRow(s.ctx, `SELECT coalesce((SELECT email FROM accounts WHERE id = $1), '(absent)')`, id).Scan(&email); err != nil {
		t.Fatal(err)
	}
	return email
}

func TestReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	s := newSite(t)
	row := func(id, email string) []casualdb.Value { return []casualdb.Value{{Text: id}, {Text: email}} }
	replay := func(t *testing.T, id int64, want string) parked.Outcome {
		t.Helper()
		o, err := parked.Replay(s.ctx, s.conn, "casualdb", id)
		if err != nil || o.String() != want {
			t.Fatalf("replay %d: got %q, %v; want %q", id, o, err, want)
		}
		if slices.Contains(s.parkedIDs(t), id) {
			t.Errorf("%d is still parked after its replay", id)
		}
		return o
	}

	ins := s.parkChange(t, accounts, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"1"}, Values: row("1", "one@x")})
	o := replay(t, ins, "inserted public.accounts key 1")
	if o != (parked.Outcome{What: "public.accounts key 1", Wrote: "inserted", Table: "public.accounts", Published: true, Publication: "casualdb"}) || s.email(t, 1) != "one@x" {
		t.Errorf("insert: got %+v, email %s", o, s.email(t, 1))
	}
	if _, err := parked.Replay(s.ctx, s.conn, "casualdb", ins); !errors.Is(err, parked.ErrNoEntry) {
		t.Errorf("a replayed entry again: got %v, want ErrNoEntry", err)
	}
	upd := s.parkChange(t, accounts, casualdb.Change{Op: casualdb.OpUpdate, Key: []string{"1"}, Values: row("1", "uno@x")})
	replay(t, upd, "updated public.accounts key 1")
	del := s.parkChange(t, accounts, casualdb.Change{Op: casualdb.OpDelete, Key: []string{"2"}})
	replay(t, del, "public.accounts key 2: the row was already absent here")
	note := s.parkChange(t, casualdb.Relation{Table: "public.notes", Schema: "public", Name: "notes", Columns: []casualdb.Column{
		{Name: "id", Type: "integer", Key: true}, {Name: "body", Type: "text"}}}, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"1"}, Values: row("1", "hi")})
	replay(t, note, "inserted public.notes key 1 (note: public.notes is not in publication casualdb, so the write stays at this site)")

	// The database refuses: the entry stays, the error has the detail.
	taken := s.parkChange(t, accounts, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"3"}, Values: row("3", "uno@x")})
	if _, err := parked.Replay(s.ctx, s.conn, "casualdb", taken); err == nil || errors.Is(err, parked.ErrNotReplayable) ||
		!strings.HasPrefix(err.Error(), "public.accounts key 3: ") || !strings.Contains(err.Error(), "Key (email)=(uno@x) already exists") {
		t.Errorf("unique value taken: got %v", err)
	}
	garbled := s.park(t, meta.Parked{Origin: "us1", Reason: "garbled message:\nbad", Payload: []byte{0xff}})
	if _, err := parked.Replay(s.ctx, s.conn, "casualdb", garbled); !errors.Is(err, parked.ErrNotReplayable) || !strings.Contains(err.Error(), "(garbled message: bad)") {
		t.Errorf("garbled: got %v, want ErrNotReplayable with the reason on one line", err)
	}
	if got := s.parkedIDs(t); fmt.Sprint(got) != fmt.Sprint([]int64{taken, garbled}) || s.email(t, 3) != "(absent)" {
		t.Errorf("after the refusals: parked %v, row 3 %s; want both parked, no row 3", got, s.email(t, 3))
	}

	t.Run("Discard", func(t *testing.T) {
		err := parked.Discard(s.ctx, s.conn, []int64{taken, 999999, 999998})
		if !errors.Is(err, parked.ErrNoEntry) || !strings.Contains(err.Error(), "999999, 999998: nothing discarded") {
			t.Errorf("unknown ids: got %v", err)
		}
		if got := s.parkedIDs(t); len(got) != 2 {
			t.Errorf("after a failed discard: parked %v, want both still there", got)
		}
		if err := parked.Discard(s.ctx, s.conn, []int64{taken, garbled}); err != nil || len(s.parkedIDs(t)) != 0 {
			t.Errorf("discard: got %v, parked %v", err, s.parkedIDs(t))
		}
	})

	t.Run("not installed", func(t *testing.T) {
		if err := meta.Uninstall(s.ctx, s.conn); err != nil {
			t.Fatal(err)
		}
		if _, err := parked.Replay(s.ctx, s.conn, "casualdb", 1); !errors.Is(err, meta.ErrNotInstalled) {
			t.Errorf("replay: got %v, want ErrNotInstalled", err)
		}
		if err := parked.Discard(s.ctx, s.conn, []int64{1}); !errors.Is(err, meta.ErrNotInstalled) {
			t.Errorf("discard: got %v, want ErrNotInstalled", err)
		}
	})
}
