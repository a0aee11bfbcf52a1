package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/meta"
	"github.com/casualdb/casualdb/parked"
	"github.com/jackc/pgx/v5"
)

// parkedSite is a PostgreSQL with the casualdb schema and a few tables:
// accounts (unique email, audited by a trigger, in publication casualdb),
// notes (composite key, in no publication) and events (identity and
// generated columns, published).
type parkedSite struct {
	pg     *pgtest.Server
	conn   *pgx.Conn
	config string
}

const parkedDDL = `
CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE, balance numeric(12,2), tags text[], born date, data jsonb, note text);
CREATE TABLE notes (id int, k text, body text, PRIMARY KEY (id, k));
CREATE TABLE events (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text, what_len int GENERATED ALWAYS AS (length(what)) STORED);
CREATE TABLE audit (tbl text, op text, role text);
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit VALUES (TG_TABLE_NAME, TG_OP, current_setting('session_replication_role')); RETURN NULL; END $$;
CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE OR DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION audit();
CREATE PUBLICATION casualdb FOR TABLE accounts, events;
`

var (
	accountsRel = casualdb.Relation{Table: "public.accounts", Schema: "public", Name: "accounts", Columns: []casualdb.Column{
		{Name: "id", Type: "integer", Key: true}, {Name: "email", Type: "text"}, {Name: "balance", Type: "numeric(12,2)"},
		{Name: "tags", Type: "text[]"}, {Name: "born", Type: "date"}, {Name: "data", Type: "jsonb"}, {Name: "note", Type: "text"}}}
	notesRel = casualdb.Relation{Table: "public.notes", Schema: "public", Name: "notes", Columns: []casualdb.Column{
		{Name: "id", Type: "integer", Key: true}, {Name: "k", Type: "text", Key: true}, {Name: "body", Type: "text"}}}
	eventsRel = casualdb.Relation{Table: "public.events", Schema: "public", Name: "events", Columns: []casualdb.Column{
		{Name: "id", Type: "integer", Key: true}, {Name: "what", Type: "text"}}}
	parkedVersion = casualdb.Version{HLC: casualdb.HLC{Wall: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).UnixMicro()}, Origin: "us1", VC: casualdb.VectorClock{"us1": 1}}
	null          = casualdb.Value{Null: true}
)

const removedReason = `unique index accounts_email_key: key ["99"] claimed the value first (unique_earlier_claim); this row was removed here`

func val(s string) casualdb.Value { return casualdb.Value{Text: s} }

func newParkedSite(t *testing.T) *parkedSite {
	t.Helper()
	pg := pgtest.NewServer(t, "parked")
	s := &parkedSite{pg: pg, conn: pgtest.Connect(t, pg.DSN()), config: writeConfig(t, pg.DSN())}
	if err := meta.Install(s.ctx(t), s.conn); err != nil {
		t.Fatal(err)
	}
	s.exec(t, parkedDDL)
	return s
}

func (s *parkedSite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (s *parkedSite) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := s.conn.Exec(s.ctx(t), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// park parks p and returns its id.
func (s *parkedSite) park(t *testing.T, p meta.Parked) int64 {
	t.Helper()
	if err := meta.Park(s.ctx(t), s.conn, p); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := s.conn.QueryRow(s.ctx(t), `SELECT max(id) FROM casualdb.parked`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// parkChange parks a change as apply's txWriter.park does (a meta.ParkedChange).
func (s *parkedSite) parkChange(t *testing.T, rel casualdb.Relation, c casualdb.Change, reason string) int64 {
	t.Helper()
	c.Table, c.Version = rel.Table, parkedVersion
	payload, err := json.Marshal(&meta.ParkedChange{Relation: rel, Change: c, CommitTime: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	return s.park(t, meta.Parked{Origin: "us1", Seq: 5, LSN: 0x16B3748, Table: rel.Table, Key: casualdb.KeyString(c.Key), Reason: reason, Payload: payload})
}

// parkRemoved parks a row removed by a unique collision as apply's
// resolveUnique does (a meta.RemovedRow); row is row_to_json of the row.
func (s *parkedSite) parkRemoved(t *testing.T, table string, key []string, row string) int64 {
	t.Helper()
	payload, err := json.Marshal(&meta.RemovedRow{Row: json.RawMessage(row), Version: parkedVersion})
	if err != nil {
		t.Fatal(err)
	}
	return s.park(t, meta.Parked{Origin: "eu1", Table: table, Key: casualdb.KeyString(key), Payload: payload, Reason: removedReason})
}

// removeRow deletes a row of table and returns its row_to_json.
func (s *parkedSite) removeRow(t *testing.T, table string, id int) string {
	t.Helper()
	var row string
	if err := s.conn.QueryRow(s.ctx(t), `DELETE FROM `+table+` t WHERE id = $1 RETURNING row_to_json(t)::text`, id).Scan(&row); err != nil {
		t.Fatalf("remove %s %d: %v", table, id, err)
	}
	return row
}

func (s *parkedSite) parkGarbled(t *testing.T, payload []byte) int64 {
	t.Helper()
	return s.park(t, meta.Parked{Origin: "us1", Seq: 9, Reason: "garbled message: invalid character 'ÿ' looking for beginning of value", Payload: payload})
}

// ids returns the ids of the parked entries, ascending.
func (s *parkedSite) ids(t *testing.T) []int64 {
	t.Helper()
	rows, err := s.conn.Query(s.ctx(t), `SELECT id FROM casualdb.parked ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func (s *parkedSite) isParked(t *testing.T, id int64) bool {
	t.Helper()
	return slices.Contains(s.ids(t), id)
}

// count returns the number of rows of table matching where.
func (s *parkedSite) count(t *testing.T, table, where string, args ...any) int {
	t.Helper()
	var n int
	if err := s.conn.QueryRow(s.ctx(t), `SELECT count(*) FROM `+table+` WHERE `+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// run runs `casualdb parked [action] --config FILE args...`.
func (s *parkedSite) run(t *testing.T, action string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	all := []string{"parked"}
	if action != "" {
		all = append(all, action)
	}
	all = append(all, "--config", s.config)
	var out, errOut strings.Builder
	m := &Main{Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }}
	err = m.Run(t.Context(), append(all, args...))
	return out.String(), errOut.String(), err
}

func (s *parkedSite) list(t *testing.T, args ...string) []parkedJSON {
	t.Helper()
	out, _, err := s.run(t, "", append([]string{"--json"}, args...)...)
	if err != nil {
		t.Fatalf("parked --json %v: %v", args, err)
	}
	var list []parkedJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil || list == nil {
		t.Fatalf("parked --json %v: stdout is not a JSON array (%v):\n%s", args, err, out)
	}
	return list
}

func listedIDs(list []parkedJSON) []int64 {
	var ids []int64
	for _, p := range list {
		ids = append(ids, p.ID)
	}
	return ids
}

func idArgs(ids ...int64) []string {
	var s []string
	for _, id := range ids {
		s = append(s, fmt.Sprint(id))
	}
	return s
}

func TestMain_Parked(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	s := newParkedSite(t)
	longReason := "check constraint notes_body_check\nviolated by " + strings.Repeat("a very long value ", 20)
	insert := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"10"},
		Values: []casualdb.Value{val("10"), val("ten@x"), null, null, null, null, null}}, "value too long for type character varying(3)")
	update := s.parkChange(t, notesRel, casualdb.Change{Op: casualdb.OpUpdate, Key: []string{"1", "a"},
		Values: []casualdb.Value{val("1"), val("a"), val("hi")}}, longReason)
	removed := s.parkRemoved(t, "public.accounts", []string{"3"}, `{"id":3,"email":"x@y","balance":null,"tags":["a"],"born":null,"data":null,"note":null}`)
	binary := []byte{0xff, 0x00, 'x', '\n'}
	garbled := s.parkGarbled(t, binary)
	garbledJSON := s.parkGarbled(t, []byte(`{"origin":""}`))
	all := []int64{garbledJSON, garbled, removed, update, insert}

	t.Run("text", func(t *testing.T) {
		out, _, err := s.run(t, "")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != 3+len(all) || lines[0] != "5 parked entries, newest first" || lines[1] != "" {
			t.Fatalf("got\n%s", out)
		}
		if cols := regexp.MustCompile(`  +`).Split(lines[2], -1); fmt.Sprint(cols) != "[ID PARKED AT ORIGIN TABLE KEY KIND REASON]" {
			t.Errorf("header: got %q", cols)
		}
		stamp := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)
		want := [][]string{
			{fmt.Sprint(garbledJSON), "us1", "-", "-", "message", "garbled message: invalid character 'ÿ' looking for beginning of value"},
			{fmt.Sprint(garbled), "us1", "-", "-", "message", "garbled message: invalid character 'ÿ' looking for beginning of value"},
			{fmt.Sprint(removed), "eu1", "public.accounts", "3", "removed row", parked.ShortReason(removedReason)},
			{fmt.Sprint(update), "us1", "public.notes", "(1,a)", "update", parked.ShortReason(longReason)},
			{fmt.Sprint(insert), "us1", "public.accounts", "10", "insert", "value too long for type character varying(3)"},
		}
		for i, w := range want {
			cols := regexp.MustCompile(`  +`).Split(lines[3+i], -1)
			if len(cols) != 7 || !stamp.MatchString(cols[1]) {
				t.Errorf("line %d: got %q, want 7 columns with an RFC 3339 UTC time second", 4+i, lines[3+i])
				continue
			}
			if got := append(cols[:1:1], cols[2:]...); fmt.Sprint(got) != fmt.Sprint(w) {
				t.Errorf("line %d:\n got %q\nwant %q", 4+i, got, w)
			}
		}
		if r := regexp.MustCompile(`  +`).Split(lines[6], -1)[6]; utf8.RuneCountInString(r) != parked.ReasonWidth || !strings.HasSuffix(r, "…") || strings.Contains(r, "\n") {
			t.Errorf("long reason: got %d characters %q, want %d on one line ending in …", utf8.RuneCountInString(r), r, parked.ReasonWidth)
		}
	})

	t.Run("json", func(t *testing.T) {
		list := s.list(t)
		if got := listedIDs(list); fmt.Sprint(got) != fmt.Sprint(all) {
			t.Fatalf("ids: got %v, want %v (newest first)", got, all)
		}
		byID := map[int64]parkedJSON{}
		for _, p := range list {
			byID[p.ID] = p
		}
		ins := byID[insert]
		var ch meta.ParkedChange
		if err := json.Unmarshal(ins.Payload, &ch); err != nil || ch.Change.Op != casualdb.OpInsert || ch.Relation.Table != "public.accounts" || ch.Change.Values[1].Text != "ten@x" {
			t.Errorf("insert payload: got %s (%v), want the change as JSON", ins.Payload, err)
		}
		if ins.Kind != "insert" || ins.Origin != "us1" || ins.Seq != 5 || ins.LSN == nil || *ins.LSN != "0/16B3748" || ins.Key != `["10"]` || ins.PayloadBase64 != nil {
			t.Errorf("insert: got %+v", ins)
		}
		if age := time.Since(ins.ParkedAt); age < 0 || age > time.Minute || ins.ParkedAt.Location() != time.UTC {
			t.Errorf("parked_at %s: want just now, in UTC", ins.ParkedAt)
		}
		if k := byID[update].Kind; k != "update" {
			t.Errorf("update: kind %q", k)
		}
		var row struct {
			Row struct {
				ID   int      `json:"id"`
				Tags []string `json:"tags"`
			} `json:"row"`
		}
		if rm := byID[removed]; rm.Kind != "removed_row" || json.Unmarshal(rm.Payload, &row) != nil || row.Row.ID != 3 || fmt.Sprint(row.Row.Tags) != "[a]" {
			t.Errorf("removed row: got %+v", rm)
		}
		g := byID[garbled]
		if g.Kind != "message" || string(g.Payload) != "null" || g.PayloadBase64 == nil || g.Table != "" || g.LSN != nil || g.Seq != 9 {
			t.Fatalf("garbled: got %+v, want the payload in base64 only", g)
		}
		if b, err := base64.StdEncoding.DecodeString(*g.PayloadBase64); err != nil || string(b) != string(binary) {
			t.Errorf("garbled payload: got %q (%v), want %q", b, err, binary)
		}
		var compact bytes.Buffer
		if gj := byID[garbledJSON]; gj.Kind != "message" || json.Compact(&compact, gj.Payload) != nil || compact.String() != `{"origin":""}` || gj.PayloadBase64 != nil {
			t.Errorf("garbled JSON: got %+v, want the payload as JSON", gj)
		}
	})

	t.Run("table", func(t *testing.T) {
		for _, tt := range []struct {
			table string
			want  []int64
		}{
			{"accounts", []int64{removed, insert}},
			{"public.accounts", []int64{removed, insert}},
			{"public.notes", []int64{update}},
			{"nosuch", []int64{}},
		} {
			if got := listedIDs(s.list(t, "--table", tt.table)); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("--table %s: got %v, want %v", tt.table, got, tt.want)
			}
		}
		if out, _, err := s.run(t, "", "--table", "notes"); err != nil || !strings.HasPrefix(out, "1 parked entry on public.notes\n") || strings.Contains(out, "public.accounts") {
			t.Errorf("--table notes text: got %v\n%s", err, out)
		}
		if out, _, _ := s.run(t, "", "--table", "nosuch"); out != "no parked entries on public.nosuch\n" {
			t.Errorf("--table nosuch text: got %q", out)
		}
		if out, _, _ := s.run(t, "", "--json", "--table", "nosuch"); out != "[]\n" {
			t.Errorf("--table nosuch json: got %q", out)
		}
	})

	t.Run("limit", func(t *testing.T) {
		if got := listedIDs(s.list(t, "--limit", "2")); fmt.Sprint(got) != fmt.Sprint(all[:2]) {
			t.Errorf("--limit 2: got %v, want %v", got, all[:2])
		}
		out, _, err := s.run(t, "", "--limit", "2")
		if err != nil || !strings.HasPrefix(out, "2 parked entries, newest first\n") || !strings.HasSuffix(out, "\nmore parked entries than shown: raise --limit\n") {
			t.Errorf("--limit 2 text: got %v\n%s", err, out)
		}
	})

	t.Run("errors", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.pg.CreateDatabase(ctx, "noschema"); err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			action string
			args   []string
			is     error
			want   string
		}{
			{"discard", nil, nil, "no ids given"},
			{"replay", []string{"x"}, nil, `"x" is not a parked entry id`},
			{"discard", []string{"0"}, nil, `"0" is not a parked entry id`},
			{"discard", []string{fmt.Sprint(insert), "--json"}, nil, "flags must come before the ids"},
			{"replay", []string{"--json", fmt.Sprint(insert)}, nil, "--json applies to the listing only"},
			{"discard", []string{"--table", "accounts", fmt.Sprint(insert)}, nil, "--table applies to the listing only"},
			{"", []string{"accounts"}, nil, `unexpected argument "accounts"`},
			{"", []string{"--tables", "accounts"}, nil, "use --table NAME"},
			{"", []string{"--table", "public."}, casualdb.ErrConfig, `"public."`},
			{"", []string{"--dsn", s.pg.DSNFor("noschema")}, meta.ErrNotInstalled, "casualdb.parked"},
			{"discard", []string{"--dsn", s.pg.DSNFor("noschema"), "1"}, meta.ErrNotInstalled, `database "noschema"`},
			{"replay", []string{"--dsn", s.pg.DSNFor("noschema"), "1"}, meta.ErrNotInstalled, "casualdb run"},
		} {
			out, _, err := s.run(t, tt.action, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Errorf("parked %s %v: got %v, want an error with %q (wrapping %v)", tt.action, tt.args, err, tt.want, tt.is)
			}
			if out != "" {
				t.Errorf("parked %s %v: stdout %q, want nothing", tt.action, tt.args, out)
			}
		}
		if got := s.ids(t); len(got) != len(all) {
			t.Errorf("after the errors: parked %v, want all %d still there", got, len(all))
		}
	})

	t.Run("discard", func(t *testing.T) {
		out, _, err := s.run(t, "discard", fmt.Sprint(insert), "999999", "999998")
		if !errors.Is(err, parked.ErrNoEntry) || !strings.Contains(err.Error(), "999999, 999998") || !strings.Contains(err.Error(), "nothing discarded") {
			t.Errorf("unknown id: got %v, want an error naming 999999 and 999998", err)
		}
		if got := s.ids(t); len(got) != len(all) || out != "" {
			t.Fatalf("unknown id: parked %v and stdout %q, want all %d still there", got, out, len(all))
		}
		out, _, err = s.run(t, "discard", fmt.Sprint(garbled), fmt.Sprint(garbledJSON), fmt.Sprint(garbled))
		if want := fmt.Sprintf("discarded 2 parked entries: %d, %d\n", garbled, garbledJSON); err != nil || out != want {
			t.Errorf("got %v %q, want %q", err, out, want)
		}
		if got, want := s.ids(t), []int64{insert, update, removed}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("after discard: parked %v, want %v", got, want)
		}
		// The action may also follow the flags.
		var stdout strings.Builder
		m := &Main{Stdout: &stdout, Stderr: &strings.Builder{}, Getenv: func(string) string { return "" }}
		if err := m.Run(t.Context(), []string{"parked", "--config", s.config, "discard", fmt.Sprint(update)}); err != nil || stdout.String() != fmt.Sprintf("discarded 1 parked entry: %d\n", update) {
			t.Errorf("flags first: got %v %q", err, stdout.String())
		}
		if s.isParked(t, update) {
			t.Errorf("%d still parked", update)
		}
	})
}

func TestMain_ParkedReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	s := newParkedSite(t)
	// A logical slot shows what capture would see of the replayed writes.
	s.exec(t, `SELECT pg_create_logical_replication_slot('parked_test', 'test_decoding')`)
	slotDropped := false
	t.Cleanup(func() {
		if !slotDropped {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = s.conn.Exec(ctx, `SELECT pg_drop_replication_slot('parked_test')`)
		}
	})

	// replay runs `casualdb parked replay ids...` and checks that it
	// succeeds with want on stdout, one line per id, and unparks them.
	replay := func(t *testing.T, want []string, ids ...int64) {
		t.Helper()
		out, errOut, err := s.run(t, "replay", idArgs(ids...)...)
		if err != nil || errOut != "" {
			t.Fatalf("replay %v: got %v, stderr %q", ids, err, errOut)
		}
		if got := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("replay %v:\n got %q\nwant %q", ids, got, want)
		}
		for _, id := range ids {
			if s.isParked(t, id) {
				t.Errorf("%d is still parked after its replay", id)
			}
		}
	}
	// refuse runs a replay of id that must fail with a line on stderr
	// containing each of want and leave the entry parked.
	refuse := func(t *testing.T, id int64, want ...string) {
		t.Helper()
		out, errOut, err := s.run(t, "replay", fmt.Sprint(id))
		if err == nil || errors.Is(err, flag.ErrHelp) || errors.Is(err, casualdb.ErrConfig) || !strings.Contains(err.Error(), fmt.Sprintf("1 of 1 not replayed: %d", id)) {
			t.Errorf("replay %d: got error %v, want one that exits 1 naming it", id, err)
		}
		if out != "" || !strings.HasPrefix(errOut, fmt.Sprintf("not replayed %d: ", id)) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("replay %d: stdout %q, stderr %q; want one line on stderr", id, out, errOut)
		}
		for _, w := range want {
			if !strings.Contains(errOut, w) {
				t.Errorf("replay %d: stderr %q lacks %q", id, errOut, w)
			}
		}
		if !s.isParked(t, id) {
			t.Errorf("%d is no longer parked after a refused replay", id)
		}
	}

	t.Run("insert", func(t *testing.T) {
		id := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"10"}, Values: []casualdb.Value{
			val("10"), val("ten@x"), val("12.50"), val(`{a,"b c"}`), val("2024-02-29"), val(`{"a": 1}`), null}}, "check violated")
		replay(t, []string{fmt.Sprintf("replayed %d: inserted public.accounts key 10", id)}, id)
		var (
			email, balance, born, a string
			tags                    []string
			noNote                  bool
		)
		err := s.conn.QueryRow(s.ctx(t), `SELECT email, balance::text, tags, born::text, data->>'a', note IS NULL FROM accounts WHERE id = 10`).
			Scan(&email, &balance, &tags, &born, &a, &noNote)
		if err != nil || email != "ten@x" || balance != "12.50" || fmt.Sprintf("%q", tags) != `["a" "b c"]` || born != "2024-02-29" || a != "1" || !noNote {
			t.Errorf("row 10: got %v %q %q %q %q %q %v", err, email, balance, tags, born, a, noNote)
		}
		// An ordinary local write: triggers fire (the session's role is
		// origin, not replica) and no replication origin marks it, so
		// capture ships it.
		if n := s.count(t, "audit", "tbl = 'accounts' AND op = 'INSERT' AND role = 'origin'"); n != 1 {
			t.Errorf("audit: got %d inserts under role origin, want 1", n)
		}
		var local []string
		rows, err := s.conn.Query(s.ctx(t), `SELECT data FROM pg_logical_slot_get_changes('parked_test', NULL, NULL, 'only-local', '1')`)
		if err == nil {
			local, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil || !slices.ContainsFunc(local, func(l string) bool {
			return strings.HasPrefix(l, "table public.accounts: INSERT: id[integer]:10 email[text]:'ten@x'")
		}) {
			t.Errorf("the logical slot's local changes lack the insert of row 10 (%v):\n%s", err, strings.Join(local, "\n"))
		}
		s.exec(t, `SELECT pg_drop_replication_slot('parked_test')`)
		slotDropped = true
	})

	t.Run("update", func(t *testing.T) {
		s.exec(t, `INSERT INTO accounts (id, email, balance, note) VALUES (11, 'old@x', 1, 'old')`)
		id := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpUpdate, Key: []string{"11"}, Values: []casualdb.Value{
			val("11"), val("new@x"), val("2.00"), null, null, null, val("new")}}, "check violated")
		// An update of a row absent here inserts it.
		absent := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpUpdate, Key: []string{"18"}, Values: []casualdb.Value{
			val("18"), null, null, null, null, null, val("eighteen")}}, "check violated")
		replay(t, []string{fmt.Sprintf("replayed %d: updated public.accounts key 11", id), fmt.Sprintf("replayed %d: inserted public.accounts key 18", absent)}, id, absent)
		if n := s.count(t, "accounts", "id = 11 AND email = 'new@x' AND balance = 2 AND note = 'new'"); n != 1 {
			t.Error("row 11 was not updated")
		}
		if n := s.count(t, "accounts", "id = 18 AND note = 'eighteen'"); n != 1 {
			t.Error("row 18 was not inserted")
		}
	})

	t.Run("delete", func(t *testing.T) {
		s.exec(t, `INSERT INTO accounts (id, email) VALUES (12, 'twelve@x')`)
		id := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpDelete, Key: []string{"12"}}, "no table here")
		gone := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpDelete, Key: []string{"98"}}, "no table here")
		replay(t, []string{fmt.Sprintf("replayed %d: deleted public.accounts key 12", id),
			fmt.Sprintf("replayed %d: public.accounts key 98: the row was already absent here", gone)}, id, gone)
		if n := s.count(t, "accounts", "id = 12"); n != 0 {
			t.Error("row 12 is still there")
		}
	})

	t.Run("removed row", func(t *testing.T) {
		s.exec(t, `INSERT INTO accounts VALUES (13, 'thirteen@x', 7.25, '{x,"y z"}', '2000-01-31', '{"n": [1, 2]}', 'a "quoted" note')`)
		row := s.removeRow(t, "accounts", 13)
		id := s.parkRemoved(t, "public.accounts", []string{"13"}, row)
		replay(t, []string{fmt.Sprintf("replayed %d: inserted public.accounts key 13", id)}, id)
		if n := s.count(t, "accounts t", "id = 13 AND row_to_json(t)::jsonb = $1::jsonb", row); n != 1 {
			t.Errorf("row 13 is not back as it was: %s", row)
		}
	})

	t.Run("composite key, not published", func(t *testing.T) {
		ins := s.parkChange(t, notesRel, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"1", "a b"}, Values: []casualdb.Value{val("1"), val("a b"), val("hi")}}, "x")
		note := " (note: public.notes is not in publication casualdb, so the write stays at this site)"
		replay(t, []string{fmt.Sprintf(`replayed %d: inserted public.notes key ["1","a b"]%s`, ins, note)}, ins)
		if n := s.count(t, "notes", "id = 1 AND k = 'a b' AND body = 'hi'"); n != 1 {
			t.Error("note (1,a b) was not inserted")
		}
		del := s.parkChange(t, notesRel, casualdb.Change{Op: casualdb.OpDelete, Key: []string{"1", "a b"}}, "x")
		replay(t, []string{fmt.Sprintf(`replayed %d: deleted public.notes key ["1","a b"]%s`, del, note)}, del)
		if n := s.count(t, "notes", "id = 1"); n != 0 {
			t.Error("note (1,a b) was not deleted")
		}
	})

	t.Run("identity and generated columns", func(t *testing.T) {
		ins := s.parkChange(t, eventsRel, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"100"}, Values: []casualdb.Value{val("100"), val("boot")}}, "x")
		replay(t, []string{fmt.Sprintf("replayed %d: inserted public.events key 100", ins)}, ins)
		s.exec(t, `INSERT INTO events (id, what) OVERRIDING SYSTEM VALUE VALUES (101, 'halt')`)
		row := s.removeRow(t, "events", 101)
		rm := s.parkRemoved(t, "public.events", []string{"101"}, row)
		replay(t, []string{fmt.Sprintf("replayed %d: inserted public.events key 101", rm)}, rm)
		if n := s.count(t, "events", "(id = 100 AND what_len = 4) OR (id = 101 AND what = 'halt' AND what_len = 4)"); n != 2 {
			t.Errorf("events 100 and 101: got %d of them", n)
		}
	})

	t.Run("unique value still taken", func(t *testing.T) {
		s.exec(t, `INSERT INTO accounts (id, email) VALUES (14, 'taken@x')`)
		bad := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"15"}, Values: []casualdb.Value{
			val("15"), val("taken@x"), null, null, null, null, null}}, "unique index accounts_email_key: the value is held by key [\"14\"]")
		good := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"16"}, Values: []casualdb.Value{
			val("16"), val("free@x"), null, null, null, null, null}}, "x")
		out, errOut, err := s.run(t, "replay", idArgs(bad, good)...)
		if err == nil || errors.Is(err, casualdb.ErrConfig) || errors.Is(err, flag.ErrHelp) || !strings.Contains(err.Error(), fmt.Sprintf("1 of 2 not replayed: %d", bad)) {
			t.Errorf("got error %v, want one that exits 1 naming %d", err, bad)
		}
		wantErr := fmt.Sprintf(`not replayed %d: public.accounts key 15: ERROR: duplicate key value violates unique constraint "accounts_email_key" (SQLSTATE 23505): Key (email)=(taken@x) already exists; it stays parked`+"\n", bad)
		if errOut != wantErr {
			t.Errorf("stderr:\n got %q\nwant %q", errOut, wantErr)
		}
		if want := fmt.Sprintf("replayed %d: inserted public.accounts key 16\n", good); out != want {
			t.Errorf("stdout: got %q, want %q", out, want)
		}
		if !s.isParked(t, bad) || s.isParked(t, good) || s.count(t, "accounts", "id = 15") != 0 || s.count(t, "accounts", "id = 16") != 1 {
			t.Errorf("after the replay: parked %v; want %d parked, %d not, row 15 absent, row 16 there", s.ids(t), bad, good)
		}
		// A removed row whose value was claimed again fails the same way.
		s.exec(t, `INSERT INTO accounts (id, email) VALUES (17, 'claimed@x')`)
		rm := s.parkRemoved(t, "public.accounts", []string{"19"}, `{"id":19,"email":"claimed@x"}`)
		refuse(t, rm, "public.accounts key 19: ERROR: duplicate key value", "23505")
		// Once the value is free, the replay goes through.
		s.exec(t, `UPDATE accounts SET email = 'moved@x' WHERE id = 14`)
		replay(t, []string{fmt.Sprintf("replayed %d: inserted public.accounts key 15", bad)}, bad)
	})

	t.Run("refused", func(t *testing.T) {
		s.exec(t, `INSERT INTO accounts (id, email, note) VALUES (20, 'twenty@x', 'keep')`)
		toast := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpUpdate, Key: []string{"20"}, Values: []casualdb.Value{
			val("20"), val("changed@x"), null, null, null, null, {Unchanged: true}}}, casualdb.ErrUnchangedToast.Error())
		refuse(t, toast, "cannot be replayed", "value of note", "unchanged")
		if n := s.count(t, "accounts", "id = 20 AND email = 'twenty@x' AND note = 'keep'"); n != 1 {
			t.Error("row 20 changed in a refused replay")
		}
		counter := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpUpdate, Key: []string{"20"}, Deltas: map[string]string{"balance": "5"},
			Values: []casualdb.Value{val("20"), val("twenty@x"), val("5"), null, null, null, val("keep")}}, "x")
		refuse(t, counter, "cannot be replayed", "counter column(s) balance")
		refuse(t, s.parkGarbled(t, []byte{0xff, 0x00}), "cannot be replayed", "transport message that did not decode")
		refuse(t, s.parkGarbled(t, []byte(`{"origin":""}`)), "cannot be replayed", "transport message")
		trunc := s.parkChange(t, accountsRel, casualdb.Change{Op: casualdb.OpTruncate}, "x")
		refuse(t, trunc, "cannot be replayed", "TRUNCATE")
		out, errOut, err := s.run(t, "replay", "999999")
		if err == nil || out != "" || errOut != "not replayed 999999: no parked entry 999999\n" {
			t.Errorf("unknown id: got %v, stdout %q, stderr %q", err, out, errOut)
		}
		if n := s.count(t, "accounts", "id = 20"); n != 1 {
			t.Error("row 20 gone")
		}
	})

	t.Run("missing column, then added", func(t *testing.T) {
		rel := notesRel
		rel.Columns = append(slices.Clone(rel.Columns), casualdb.Column{Name: "tag", Type: "text"})
		id := s.parkChange(t, rel, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"2", "b"}, Values: []casualdb.Value{val("2"), val("b"), val("x"), val("red")}},
			"schema differs from origin: table public.notes lacks column(s) tag that the origin has")
		refuse(t, id, "public.notes lacks column(s) tag that the change writes")
		s.exec(t, `ALTER TABLE notes ADD COLUMN tag text`)
		out, _, err := s.run(t, "replay", fmt.Sprint(id))
		if err != nil || !strings.HasPrefix(out, fmt.Sprintf("replayed %d: inserted public.notes key (2,b)", id)) || s.count(t, "notes", "id = 2 AND tag = 'red'") != 1 {
			t.Errorf("after adding the column: got %v %q", err, out)
		}
	})
}
