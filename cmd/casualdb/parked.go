package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// parkedTimeout bounds each database step of `casualdb parked`: the
// listing, a discard, the transaction replaying one entry (the connection is
// bounded by database.connect_timeout).
const parkedTimeout = 30 * time.Second

// The text listing cuts reasons and keys to these many characters.
const (
	reasonWidth    = 80
	parkedKeyWidth = 40
)

// errNoParked marks an id with no parked entry.
var errNoParked = errors.New("no parked entry")

// errNotReplayable marks a parked entry that replay refuses to write.
var errNotReplayable = errors.New("cannot be replayed")

// parkedFlags are the flags of `casualdb parked` beside the configuration
// flags.
type parkedFlags struct {
	table string
	limit positiveInt
	json  bool
	fs    *flag.FlagSet
}

func (f *parkedFlags) register(fs *flag.FlagSet) {
	f.fs = fs
	f.limit = 100
	fs.StringVar(&f.table, "table", "", "list only entries of this table: name (schema public) or schema.name")
	fs.Var(&f.limit, "limit", "list at most this many entries, the newest")
	fs.BoolVar(&f.json, "json", false, "print a JSON array (whole entries, payloads included) instead of text")
}

func isParkedAction(s string) bool { return s == "list" || s == "discard" || s == "replay" }

// parkedCmd runs `casualdb parked [flags]`, `casualdb parked discard
// [flags] ID...` and `casualdb parked replay [flags] ID...`. The action may
// also follow the flags.
func (m *Main) parkedCmd(ctx context.Context, args []string) error {
	action := "list"
	if len(args) > 0 && isParkedAction(args[0]) {
		action, args = args[0], args[1:]
	}
	var pf parkedFlags
	cfg, err := m.parseConfig("parked", args, pf.register)
	if err != nil {
		return err
	}
	rest := pf.fs.Args()
	if action == "list" && len(rest) > 0 && isParkedAction(rest[0]) {
		action, rest = rest[0], rest[1:]
	}
	set := map[string]bool{}
	pf.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["tables"] {
		return fmt.Errorf("parked: --tables sets the replicated tables (database.tables); to filter by table use --table NAME")
	}
	if action == "list" {
		if len(rest) > 0 {
			return fmt.Errorf("parked: unexpected argument %q (flags must come first; the actions are discard and replay)", rest[0])
		}
		return m.listParked(ctx, cfg, pf)
	}
	for _, name := range []string{"table", "limit", "json"} {
		if set[name] {
			return fmt.Errorf("parked %s: --%s applies to the listing only", action, name)
		}
	}
	ids, err := parseParkedIDs(rest)
	if err != nil {
		return fmt.Errorf("parked %s: %w", action, err)
	}
	if action == "discard" {
		return m.discardParked(ctx, cfg, ids)
	}
	return m.replayParked(ctx, cfg, ids)
}

// parseParkedIDs parses the ids given to discard and replay, dropping
// repeats.
func parseParkedIDs(args []string) ([]int64, error) {
	if len(args) == 0 {
		return nil, errors.New("no ids given (casualdb parked lists the entries with their ids)")
	}
	var ids []int64
	for _, a := range args {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id < 1 {
			if strings.HasPrefix(a, "-") {
				return nil, fmt.Errorf("%q is not a parked entry id (flags must come before the ids)", a)
			}
			return nil, fmt.Errorf("%q is not a parked entry id", a)
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// ---- listing

func (m *Main) listParked(ctx context.Context, cfg Config, pf parkedFlags) error {
	// One more than asked tells the text output that there are more.
	f := meta.ParkedFilter{Limit: int(pf.limit) + 1}
	if pf.table != "" {
		t, err := capture.ParseTable(pf.table)
		if err != nil {
			return fmt.Errorf("--table: %w", err)
		}
		f.Table = t.String()
	}
	conn, err := connect(ctx, cfg.Database.DSN, cfg.Database.ConnectTimeout, "parked")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	qctx, cancel := context.WithTimeout(ctx, parkedTimeout)
	defer cancel()
	list, err := meta.FindParked(qctx, conn, f)
	if err != nil {
		return noSchema(conn, "casualdb.parked", err)
	}
	more := len(list) > int(pf.limit)
	if more {
		list = list[:pf.limit]
	}
	if pf.json {
		return writeParkedJSON(m.Stdout, list)
	}
	return writeParkedText(m.Stdout, list, f.Table, more)
}

// kindText is how the text listing shows a kind.
func kindText(kind meta.ParkedKind) string { return strings.ReplaceAll(string(kind), "_", " ") }

// writeParkedText writes a line per entry under a header line: id, when it
// was parked (UTC), origin, table, key, kind and the reason, cut.
func writeParkedText(w io.Writer, list []meta.Parked, table string, more bool) error {
	scope := ""
	if table != "" {
		scope = " on " + table
	}
	var b strings.Builder
	switch len(list) {
	case 0:
		fmt.Fprintf(&b, "no parked entries%s\n", scope)
	case 1:
		fmt.Fprintf(&b, "1 parked entry%s\n", scope)
	default:
		fmt.Fprintf(&b, "%d parked entries%s, newest first\n", len(list), scope)
	}
	if len(list) > 0 {
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPARKED AT\tORIGIN\tTABLE\tKEY\tKIND\tREASON")
		orDash := func(s string) string {
			if s == "" {
				return "-"
			}
			return s
		}
		for _, p := range list {
			key := ""
			if p.Key != "" {
				key = abbreviate(oneLine(displayKey(p.Key)), parkedKeyWidth)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.ParkedAt.UTC().Format(time.RFC3339),
				orDash(oneLine(string(p.Origin))), orDash(oneLine(p.Table)), orDash(key), kindText(p.Decode().Kind),
				abbreviate(oneLine(p.Reason), reasonWidth))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write parked: %w", err)
		}
	}
	if more {
		fmt.Fprintf(&b, "\nmore parked entries%s than shown: raise --limit\n", scope)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write parked: %w", err)
	}
	return nil
}

// oneLine collapses runs of white space (newlines, tabs) into one space, so
// that a value cannot break the line or the columns.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// parkedJSON is the --json form of a parked entry.
type parkedJSON struct {
	ID       int64     `json:"id"`
	ParkedAt time.Time `json:"parked_at"`
	Origin   string    `json:"origin"` // "" when unknown
	Seq      uint64    `json:"seq"`    // the origin's outbox sequence; 0 when unknown
	LSN      *string   `json:"lsn"`    // the origin's commit LSN; null when unknown
	Table    string    `json:"table"`  // "" for a message
	Key      string    `json:"key"`    // casualdb.KeyString; "" for a message
	Kind     string    `json:"kind"`
	Reason   string    `json:"reason"`
	// The payload when it is JSON, else null; then PayloadBase64 holds it.
	Payload       json.RawMessage `json:"payload"`
	PayloadBase64 *string         `json:"payload_base64"`
}

// writeParkedJSON writes list as one JSON array ([] when empty).
func writeParkedJSON(w io.Writer, list []meta.Parked) error {
	out := make([]parkedJSON, len(list))
	for i, p := range list {
		j := parkedJSON{ID: p.ID, ParkedAt: p.ParkedAt.UTC(), Origin: string(p.Origin), Seq: p.Seq, Table: p.Table, Key: p.Key,
			Kind: string(p.Decode().Kind), Reason: p.Reason}
		if p.LSN != 0 {
			s := casualdb.FormatLSN(p.LSN)
			j.LSN = &s
		}
		switch {
		case json.Valid(p.Payload):
			j.Payload = json.RawMessage(p.Payload)
		case p.Payload != nil:
			s := base64.StdEncoding.EncodeToString(p.Payload)
			j.PayloadBase64 = &s
		}
		out[i] = j
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("write parked: %w", err)
	}
	return nil
}

// ---- discard

// discardParked deletes ids in one transaction: all of them, or, when one
// does not exist, none.
func (m *Main) discardParked(ctx context.Context, cfg Config, ids []int64) error {
	conn, err := connect(ctx, cfg.Database.DSN, cfg.Database.ConnectTimeout, "parked")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	ctx, cancel := context.WithTimeout(ctx, parkedTimeout)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("parked discard: begin: %w", err)
	}
	defer rollback(tx)
	deleted, err := meta.DeleteParked(ctx, tx, ids)
	if err != nil {
		return fmt.Errorf("parked discard: %w", noSchema(conn, "casualdb.parked", err))
	}
	var missing []string
	for _, id := range ids {
		if !slices.Contains(deleted, id) {
			missing = append(missing, strconv.FormatInt(id, 10))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("parked discard: %w %s: nothing discarded", errNoParked, strings.Join(missing, ", "))
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("parked discard: commit: %w", err)
	}
	noun := "entries"
	if len(ids) == 1 {
		noun = "entry"
	}
	fmt.Fprintf(m.Stdout, "discarded %d parked %s: %s\n", len(ids), noun, joinIDs(ids))
	return nil
}

func joinIDs(ids []int64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(s, ", ")
}

// rollback ends tx if it is still open; after a commit it does nothing.
func rollback(tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = tx.Rollback(ctx)
}

// ---- replay

// replayParked replays each id in its own transaction and prints a line
// for each: on stdout when it was written, on stderr when not (it then
// stays parked). The error reports the ids not replayed.
func (m *Main) replayParked(ctx context.Context, cfg Config, ids []int64) error {
	conn, err := connect(ctx, cfg.Database.DSN, cfg.Database.ConnectTimeout, "parked")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	var failed []int64
	for i, id := range ids {
		done, err := replayOne(ctx, conn, cfg.Database.Publication, id)
		if err == nil {
			fmt.Fprintf(m.Stdout, "replayed %d: %s\n", id, done)
			continue
		}
		if errors.Is(err, meta.ErrNotInstalled) || ctx.Err() != nil || conn.IsClosed() {
			// Nothing more can be done on this connection.
			return fmt.Errorf("parked replay %d: %w (not attempted: %s)", id, err, orNone(joinIDs(ids[i+1:])))
		}
		failed = append(failed, id)
		if errors.Is(err, errNoParked) {
			fmt.Fprintf(m.Stderr, "not replayed %d: %v\n", id, err)
		} else {
			fmt.Fprintf(m.Stderr, "not replayed %d: %v; it stays parked\n", id, err)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("parked replay: %d of %d not replayed: %s", len(failed), len(ids), joinIDs(failed))
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// replayOne writes parked entry id as a local write and deletes the entry,
// in one transaction; it says what it did.
func replayOne(ctx context.Context, conn *pgx.Conn, publication string, id int64) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, parkedTimeout)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return "", fmt.Errorf("begin: %w", err)
	}
	defer rollback(tx)
	p, ok, err := meta.LockParked(ctx, tx, id)
	if err != nil {
		return "", noSchema(conn, "casualdb.parked", err)
	}
	if !ok {
		return "", fmt.Errorf("%w %d", errNoParked, id)
	}
	pl := p.Decode()
	w, err := planReplay(ctx, tx, p, pl, publication)
	if err != nil {
		return "", err
	}
	var inserted bool
	var done string
	err = tx.QueryRow(ctx, w.sql, w.args...).Scan(&inserted)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		done = w.what + ": " + w.absent
	case err != nil:
		return "", fmt.Errorf("%s: %w", w.what, withDetail(err))
	case w.del:
		done = "deleted " + w.what
	case inserted:
		done = "inserted " + w.what
	default:
		done = "updated " + w.what
	}
	if _, err := meta.DeleteParked(ctx, tx, []int64{id}); err != nil {
		return "", err
	}
	if err := tx.Commit(ctx); err != nil {
		return "", fmt.Errorf("%s: commit: %w", w.what, withDetail(err))
	}
	if !w.table.published {
		done += fmt.Sprintf(" (note: %s is not in publication %s, so the write stays at this site)", w.table.name, publication)
	}
	return done, nil
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

// replayWrite is the statement that replays an entry. It returns one row,
// true when it inserted, or no row when there was nothing to write.
type replayWrite struct {
	sql    string
	args   []any
	table  *parkedTable
	what   string // "public.accounts key 1"
	absent string // what to say when it returns no row
	del    bool   // a delete: its row means "deleted"
}

// planReplay builds the write for p, or says why p cannot be replayed.
func planReplay(ctx context.Context, tx pgx.Tx, p meta.Parked, pl meta.ParkedPayload, publication string) (*replayWrite, error) {
	what := p.Table + " key " + displayKey(p.Key)
	switch pl.Kind {
	case meta.ParkedMessage:
		return nil, fmt.Errorf("%w: it is a transport message that did not decode (%s), not a row; see it with casualdb parked --json, and discard it", errNotReplayable, abbreviate(oneLine(p.Reason), reasonWidth))
	case meta.ParkedTruncate:
		return nil, fmt.Errorf("%w: a TRUNCATE of %s is not replayed; truncate the table by hand if it should be, and discard the entry", errNotReplayable, p.Table)
	case meta.ParkedRemovedRow:
		schema, name, err := resolveTable(ctx, tx, p.Table)
		if err != nil {
			return nil, err
		}
		lt, err := describeParkedTable(ctx, tx, schema, name, publication)
		if err != nil {
			return nil, err
		}
		w, err := removedRowWrite(lt, pl.Removed.Row)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		w.what = what
		return w, nil
	}
	rel, c := pl.Change.Relation, pl.Change.Change
	if rel.Schema == "" || rel.Name == "" {
		return nil, fmt.Errorf("%w: the parked change of %s names no table", errNotReplayable, what)
	}
	lt, err := describeParkedTable(ctx, tx, rel.Schema, rel.Name, publication)
	if err != nil {
		return nil, err
	}
	w, err := changeWrite(lt, rel, c)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", pl.Kind, what, err)
	}
	w.what = what
	return w, nil
}

// parkedTable is a table as this site has it.
type parkedTable struct {
	name      string // schema.name
	ident     string // quoted
	cols      []parkedColumn
	keys      []string // primary-key columns in key order
	published bool     // in the sidecar's publication: capture ships its writes
}

type parkedColumn struct {
	name, typ      string // typ as format_type renders it
	generated      bool
	identityAlways bool
	key            bool
}

func (t *parkedTable) col(name string) (parkedColumn, bool) {
	for _, c := range t.cols {
		if c.name == name {
			return c, true
		}
	}
	return parkedColumn{}, false
}

// resolveTable finds the table a CasualDB table name (schema.name,
// unquoted) names.
func resolveTable(ctx context.Context, tx pgx.Tx, table string) (schema, name string, err error) {
	rows, err := tx.Query(ctx, `SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname || '.' || c.relname = $1 AND c.relkind IN ('r', 'p')`, table)
	if err != nil {
		return "", "", fmt.Errorf("find table %s: %w", table, err)
	}
	type sn struct{ Schema, Name string }
	found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[sn])
	if err != nil {
		return "", "", fmt.Errorf("find table %s: %w", table, err)
	}
	switch len(found) {
	case 0:
		return "", "", fmt.Errorf("%w: table %s does not exist here", casualdb.ErrSchemaMismatch, table)
	case 1:
		return found[0].Schema, found[0].Name, nil
	}
	return "", "", fmt.Errorf("table name %s is ambiguous here (%d tables)", table, len(found))
}

// describeParkedTable reads the columns and primary key of schema.name from
// the catalog, and whether it is in publication.
func describeParkedTable(ctx context.Context, tx pgx.Tx, schema, name, publication string) (*parkedTable, error) {
	t := &parkedTable{name: casualdb.TableName(schema, name), ident: pgx.Identifier{schema, name}.Sanitize()}
	rows, err := tx.Query(ctx, `
		SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', a.attidentity = 'a',
		       coalesce((SELECT k.n FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, n) WHERE k.att = a.attnum), 0)::int
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, schema, name)
	if err != nil {
		return nil, fmt.Errorf("describe table %s: %w", t.name, err)
	}
	keyPos := map[string]int{}
	for rows.Next() {
		var c parkedColumn
		var pos int
		if err := rows.Scan(&c.name, &c.typ, &c.generated, &c.identityAlways, &pos); err != nil {
			rows.Close()
			return nil, fmt.Errorf("describe table %s: %w", t.name, err)
		}
		c.key = pos > 0
		if c.key {
			keyPos[c.name] = pos
			t.keys = append(t.keys, c.name)
		}
		t.cols = append(t.cols, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("describe table %s: %w", t.name, err)
	}
	if len(t.cols) == 0 {
		return nil, fmt.Errorf("%w: table %s does not exist here", casualdb.ErrSchemaMismatch, t.name)
	}
	slices.SortFunc(t.keys, func(a, b string) int { return keyPos[a] - keyPos[b] })
	err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)`,
		publication, schema, name).Scan(&t.published)
	if err != nil {
		return nil, fmt.Errorf("describe table %s: publication %s: %w", t.name, publication, err)
	}
	return t, nil
}

// changeWrite builds the write of a parked change: an upsert of its values
// for an insert or update, a delete by key for a delete. Each value is cast
// from its text form to the local column type, as apply does.
func changeWrite(lt *parkedTable, rel casualdb.Relation, c casualdb.Change) (*replayWrite, error) {
	w := &replayWrite{table: lt}
	if c.Op == casualdb.OpDelete {
		keyIdx := rel.KeyColumns()
		if len(keyIdx) == 0 || len(keyIdx) != len(c.Key) {
			return nil, fmt.Errorf("%w: the change has %d key values for %d key columns", errNotReplayable, len(c.Key), len(keyIdx))
		}
		var conds []string
		for i, idx := range keyIdx {
			col, ok := lt.col(rel.Columns[idx].Name)
			if !ok {
				return nil, fmt.Errorf("%w: table %s lacks key column %s", casualdb.ErrSchemaMismatch, lt.name, rel.Columns[idx].Name)
			}
			w.args = append(w.args, c.Key[i])
			conds = append(conds, fmt.Sprintf("%s = CAST($%d::text AS %s)", pgx.Identifier{col.name}.Sanitize(), len(w.args), col.typ))
		}
		w.sql = fmt.Sprintf("DELETE FROM %s WHERE %s RETURNING false", lt.ident, strings.Join(conds, " AND "))
		w.absent, w.del = "the row was already absent here", true
		return w, nil
	}
	if len(c.Deltas) > 0 {
		// A local write ships new minus old as the increment: the sites
		// that applied this change would count its increments twice.
		names := make([]string, 0, len(c.Deltas))
		for n := range c.Deltas {
			names = append(names, n)
		}
		slices.Sort(names)
		return nil, fmt.Errorf("%w: it writes counter column(s) %s, and a replayed write would count the increment again at every site that applied it; adjust the row by hand, then discard the entry",
			errNotReplayable, strings.Join(names, ", "))
	}
	if len(c.Values) != len(rel.Columns) {
		return nil, fmt.Errorf("%w: the change has %d values for %d columns", errNotReplayable, len(c.Values), len(rel.Columns))
	}
	var unchanged, missing, names, vals []string
	for i, rc := range rel.Columns {
		if c.Values[i].Unchanged {
			unchanged = append(unchanged, rc.Name)
			continue
		}
		col, ok := lt.col(rc.Name)
		if !ok {
			missing = append(missing, rc.Name)
			continue
		}
		var arg any // SQL NULL
		if !c.Values[i].Null {
			arg = c.Values[i].Text
		}
		w.args = append(w.args, arg)
		names = append(names, col.name)
		vals = append(vals, fmt.Sprintf("CAST($%d::text AS %s)", len(w.args), col.typ))
	}
	switch {
	case len(unchanged) > 0:
		return nil, fmt.Errorf("%w: %w: the origin did not send the value of %s (unchanged and stored out of line), and writing the row without it would guess; write the row by hand from the origin's copy, then discard the entry (REPLICA IDENTITY FULL on %s avoids this)",
			errNotReplayable, casualdb.ErrUnchangedToast, strings.Join(unchanged, ", "), rel.Table)
	case len(missing) > 0:
		return nil, fmt.Errorf("%w: table %s lacks column(s) %s that the change writes; add them and replay again", casualdb.ErrSchemaMismatch, lt.name, strings.Join(missing, ", "))
	}
	sql, err := lt.upsert(names, "VALUES ("+strings.Join(vals, ", ")+")")
	if err != nil {
		return nil, err
	}
	w.sql = sql
	w.absent = "nothing to write: the row is already there and has only identity columns"
	return w, nil
}

// removedRowWrite builds the upsert of a row that apply removed to settle a
// unique collision. The row is row_to_json of this site's row, so
// json_populate_record reads each value back as the local column type
// (arrays, json, bytea and all); generated columns are computed again.
func removedRowWrite(lt *parkedTable, row json.RawMessage) (*replayWrite, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(row, &fields); err != nil {
		return nil, fmt.Errorf("%w: the parked row is not a JSON object: %v", errNotReplayable, err)
	}
	var missing, names, sel []string
	for name := range fields {
		if _, ok := lt.col(name); !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("%w: table %s lacks column(s) %s that the row has", casualdb.ErrSchemaMismatch, lt.name, strings.Join(missing, ", "))
	}
	for _, c := range lt.cols { // in the table's order
		if _, ok := fields[c.name]; ok && !c.generated {
			names = append(names, c.name)
			sel = append(sel, "r."+pgx.Identifier{c.name}.Sanitize())
		}
	}
	sql, err := lt.upsert(names, fmt.Sprintf("SELECT %s FROM json_populate_record(NULL::%s, $1::json) AS r", strings.Join(sel, ", "), lt.ident))
	if err != nil {
		return nil, err
	}
	return &replayWrite{sql: sql, args: []any{string(row)}, table: lt, absent: "nothing to write: the row is already there and has only identity columns"}, nil
}

// upsert returns INSERT INTO t (names) source ON CONFLICT (primary key) DO
// UPDATE SET every written column but the key (the key when that is all),
// returning whether it inserted: a row the statement inserted has no xmax,
// one it updated carries the statement's own row lock there.
func (t *parkedTable) upsert(names []string, source string) (string, error) {
	if len(t.keys) == 0 {
		return "", fmt.Errorf("%w: %w: %s here", errNotReplayable, casualdb.ErrNoPrimaryKey, t.name)
	}
	for _, k := range t.keys {
		if !slices.Contains(names, k) {
			return "", fmt.Errorf("%w: %w: the primary key of %s here, (%s), is not all in the parked row", errNotReplayable, casualdb.ErrSchemaMismatch, t.name, strings.Join(t.keys, ", "))
		}
	}
	var cols, sets, keySets, keys []string
	override := ""
	for _, n := range names {
		c, _ := t.col(n)
		id := pgx.Identifier{n}.Sanitize()
		cols = append(cols, id)
		set := id + " = EXCLUDED." + id
		switch {
		case c.identityAlways:
			// Kept from the origin on insert; never updated (PostgreSQL
			// allows only DEFAULT).
			override = " OVERRIDING SYSTEM VALUE"
		case c.key:
			keySets = append(keySets, set)
		default:
			sets = append(sets, set)
		}
	}
	for _, k := range t.keys {
		keys = append(keys, pgx.Identifier{k}.Sanitize())
	}
	if len(sets) == 0 {
		// Only key columns: rewriting them is still a write, which capture
		// versions and ships like any other.
		sets = keySets
	}
	action := "DO NOTHING"
	if len(sets) > 0 {
		action = "DO UPDATE SET " + strings.Join(sets, ", ")
	}
	return fmt.Sprintf("INSERT INTO %s (%s)%s %s ON CONFLICT (%s) %s RETURNING xmax = 0",
		t.ident, strings.Join(cols, ", "), override, source, strings.Join(keys, ", "), action), nil
}
