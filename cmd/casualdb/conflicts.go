package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/node"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// conflictsQueryTimeout bounds the query of `casualdb conflicts` (the
// connection is bounded by database.connect_timeout).
const conflictsQueryTimeout = 30 * time.Second

// rowImageWidth is how many characters of a row image the text output shows.
const rowImageWidth = 80

// errNoSchema marks a database where the sidecar has not created the
// casualdb schema yet.
var errNoSchema = errors.New("casualdb schema not installed")

// conflictsFlags are the flags of `casualdb conflicts` beside the
// configuration flags.
type conflictsFlags struct {
	since sinceFlag
	table string
	limit positiveInt
	json  bool
	fs    *flag.FlagSet
}

func (f *conflictsFlags) register(fs *flag.FlagSet) {
	f.fs = fs
	f.since = sinceFlag{d: 24 * time.Hour, text: "24h"}
	f.limit = 100
	fs.Var(&f.since, "since", "list conflicts logged this long ago or later: a duration (90m, 24h) or whole days (7d)")
	fs.StringVar(&f.table, "table", "", "only conflicts on this table: name (schema public) or schema.name")
	fs.Var(&f.limit, "limit", "list at most this many conflicts, the newest")
	fs.BoolVar(&f.json, "json", false, "print a JSON array (full row images and versions) instead of text")
}

func (m *Main) conflictsCmd(ctx context.Context, args []string) error {
	var cf conflictsFlags
	cfg, err := m.parseConfig("conflicts", args, cf.register)
	if err != nil {
		return err
	}
	if cf.fs.NArg() > 0 {
		return fmt.Errorf("conflicts: unexpected argument %q (flags must come first; --table NAME selects a table)", cf.fs.Arg(0))
	}
	// --tables (the replicated tables) is one letter from --table: refuse
	// it rather than silently list every table.
	var tables bool
	cf.fs.Visit(func(f *flag.Flag) { tables = tables || f.Name == "tables" })
	if tables {
		return fmt.Errorf("conflicts: --tables sets the replicated tables (database.tables); to filter by table use --table NAME")
	}
	q := conflictQuery{Since: cf.since.d, Limit: int(cf.limit)}
	if cf.table != "" {
		t, err := capture.ParseTable(cf.table)
		if err != nil {
			return fmt.Errorf("--table: %w", err)
		}
		q.Table = t.String()
	}
	// One more than asked tells the text output that there are more.
	q.Limit++
	list, err := ListConflicts(ctx, cfg, q)
	if err != nil {
		return err
	}
	more := len(list) > int(cf.limit)
	if more {
		list = list[:cf.limit]
	}
	if cf.json {
		return writeConflictsJSON(m.Stdout, list)
	}
	return writeConflictsText(m.Stdout, list, conflictsScope(q.Table, cf.since.text), more)
}

// conflictQuery selects rows of casualdb.conflict_log.
type conflictQuery struct {
	Since time.Duration // how far back from the server's now(); must be positive
	Table string        // CasualDB table name (schema.name); empty: every table
	Limit int           // at most this many rows, the newest
}

// LoggedConflict is one row of casualdb.conflict_log, as meta.LogConflict
// wrote it.
type LoggedConflict struct {
	ID       int64
	LoggedAt time.Time
	Table    string // schema.name (casualdb.TableName)
	Key      string // casualdb.KeyString: a JSON array of the key's values in text form
	Rule     string
	Winner   string // "local" or "remote"
	// The versions; nil when none was recorded.
	LocalVersion, RemoteVersion *casualdb.Version
	// The row images as JSON objects; nil when there was no row: absent
	// (deleted) here for the local one, a delete for the remote one.
	LocalRow, RemoteRow json.RawMessage

	localVersion, remoteVersion []byte // the jsonb as read
}

// conflictColumns are the columns read from casualdb.conflict_log, in
// order, with where each is scanned to. A new column (say kind) is one more
// line here and a field in LoggedConflict.
var conflictColumns = []struct {
	name string
	dest func(*LoggedConflict) any
}{
	{"id", func(c *LoggedConflict) any { return &c.ID }},
	{"logged_at", func(c *LoggedConflict) any { return &c.LoggedAt }},
	{"tbl", func(c *LoggedConflict) any { return &c.Table }},
	{"key", func(c *LoggedConflict) any { return &c.Key }},
	{"rule", func(c *LoggedConflict) any { return &c.Rule }},
	{"winner", func(c *LoggedConflict) any { return &c.Winner }},
	{"local_version", func(c *LoggedConflict) any { return &c.localVersion }},
	{"remote_version", func(c *LoggedConflict) any { return &c.remoteVersion }},
	{"local_row", func(c *LoggedConflict) any { return &c.LocalRow }},
	{"remote_row", func(c *LoggedConflict) any { return &c.RemoteRow }},
}

// sql returns the statement and its arguments. The window is measured by the
// server's clock, which also wrote logged_at.
func (q conflictQuery) sql() (string, []any) {
	cols := make([]string, len(conflictColumns))
	for i, c := range conflictColumns {
		cols[i] = c.name
	}
	args := []any{q.Since.Seconds()}
	where := []string{"logged_at >= now() - make_interval(secs => $1)"}
	if q.Table != "" {
		args = append(args, q.Table)
		where = append(where, fmt.Sprintf("tbl = $%d", len(args)))
	}
	args = append(args, q.Limit)
	return fmt.Sprintf("SELECT %s FROM casualdb.conflict_log WHERE %s ORDER BY logged_at DESC, id DESC LIMIT $%d",
		strings.Join(cols, ", "), strings.Join(where, " AND "), len(args)), args
}

// ListConflicts connects to the site's database and returns the conflicts q
// selects, newest first.
func ListConflicts(ctx context.Context, cfg node.Config, q conflictQuery) ([]LoggedConflict, error) {
	pcfg, err := pgx.ParseConfig(cfg.Database.DSN)
	if err != nil {
		return nil, fmt.Errorf("%w: database.dsn: %v", casualdb.ErrConfig, err)
	}
	pcfg.RuntimeParams["application_name"] = "casualdb-conflicts"
	cctx, cancel := context.WithTimeout(ctx, cfg.Database.ConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("connect to database (database.dsn): %w", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(ctx)
	}()
	qctx, cancel := context.WithTimeout(ctx, conflictsQueryTimeout)
	defer cancel()
	list, err := queryConflicts(qctx, conn, q)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table
		return nil, fmt.Errorf("%w in database %q (no table casualdb.conflict_log): run the sidecar (casualdb run) against it once to create it", errNoSchema, conn.Config().Database)
	}
	return list, err
}

func queryConflicts(ctx context.Context, conn *pgx.Conn, q conflictQuery) ([]LoggedConflict, error) {
	sql, args := q.sql()
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read conflict log: %w", err)
	}
	defer rows.Close()
	list := []LoggedConflict{}
	for rows.Next() {
		var c LoggedConflict
		dest := make([]any, len(conflictColumns))
		for i, col := range conflictColumns {
			dest[i] = col.dest(&c)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("read conflict log: %w", err)
		}
		if c.LocalVersion, err = decodeVersion(c.localVersion); err != nil {
			return nil, fmt.Errorf("read conflict log: id %d: local_version: %w", c.ID, err)
		}
		if c.RemoteVersion, err = decodeVersion(c.remoteVersion); err != nil {
			return nil, fmt.Errorf("read conflict log: id %d: remote_version: %w", c.ID, err)
		}
		c.LoggedAt = c.LoggedAt.UTC()
		list = append(list, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read conflict log: %w", err)
	}
	return list, nil
}

// decodeVersion decodes a version as meta.LogConflict stores it. SQL NULL
// and the zero version (apply had none on record) are nil.
func decodeVersion(b []byte) (*casualdb.Version, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var v casualdb.Version
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	if v.HLC.Wall == 0 && v.Origin == "" {
		return nil, nil
	}
	return &v, nil
}

// conflictsScope says what was searched: "in the last 24h", "on
// public.accounts in the last 7d".
func conflictsScope(table, since string) string {
	if table != "" {
		return "on " + table + " in the last " + since
	}
	return "in the last " + since
}

// writeConflictsText writes one block per conflict: a line with when, where
// and how it was resolved, then a line per side with its version and row
// image; the winning side is marked with '*'.
func writeConflictsText(w io.Writer, list []LoggedConflict, scope string, more bool) error {
	var b strings.Builder
	switch len(list) {
	case 0:
		fmt.Fprintf(&b, "no conflicts %s\n", scope)
	case 1:
		fmt.Fprintf(&b, "1 conflict %s\n", scope)
	default:
		fmt.Fprintf(&b, "%d conflicts %s, newest first\n", len(list), scope)
	}
	for _, c := range list {
		fmt.Fprintf(&b, "\n%s  %s  key %s  rule %s  winner %s\n",
			c.LoggedAt.UTC().Format(time.RFC3339), c.Table, displayKey(c.Key), c.Rule, c.Winner)
		side := func(name string, v *casualdb.Version, row json.RawMessage, noRow string) {
			mark := " "
			if c.Winner == name {
				mark = "*"
			}
			fmt.Fprintf(&b, "%s %-6s  %s  %s\n", mark, name, shortVersion(v), shortRow(row, noRow, rowImageWidth))
		}
		side("local", c.LocalVersion, c.LocalRow, "(no row)")
		side("remote", c.RemoteVersion, c.RemoteRow, "(delete)")
	}
	if more {
		fmt.Fprintf(&b, "\nmore conflicts %s than shown: raise --limit or narrow --since or --table\n", scope)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// shortVersion renders a version as "origin wall-time +logical", e.g.
// "us1 2024-05-01T12:00:02.000001Z +1". Wall times keep their microseconds:
// they decide last-writer-wins.
func shortVersion(v *casualdb.Version) string {
	if v == nil {
		return "(no version)"
	}
	return fmt.Sprintf("%s %s +%d", v.Origin, v.HLC.Time().Format("2006-01-02T15:04:05.000000Z07:00"), v.HLC.Logical)
}

// shortRow renders a row image compactly on one line, cut to width
// characters; noRow stands for a missing image.
func shortRow(row json.RawMessage, noRow string, width int) string {
	if len(row) == 0 || string(row) == "null" {
		return noRow
	}
	var b bytes.Buffer
	if err := json.Compact(&b, row); err != nil {
		return abbreviate(string(row), width)
	}
	return abbreviate(b.String(), width)
}

// abbreviate cuts s to at most width characters (runes), ending a cut
// string with "…".
func abbreviate(s string, width int) string {
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	if width < 1 {
		return ""
	}
	n := 0
	for i := range s {
		if n == width-1 {
			return s[:i] + "…"
		}
		n++
	}
	return s
}

// displayKey renders a key as stored (casualdb.KeyString, a JSON array of
// text values) more readably: 42 for ["42"], (1,a) for ["1","a"]. Values
// that would be ambiguous unquoted keep the JSON form.
func displayKey(key string) string {
	var vals []string
	if err := json.Unmarshal([]byte(key), &vals); err != nil || len(vals) == 0 {
		return key
	}
	for _, v := range vals {
		if v == "" || strings.ContainsAny(v, " ,()\"\\") || strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			return key
		}
	}
	if len(vals) == 1 {
		return vals[0]
	}
	return "(" + strings.Join(vals, ",") + ")"
}

// conflictJSON is the --json form of a conflict.
type conflictJSON struct {
	ID            int64           `json:"id"`
	LoggedAt      time.Time       `json:"logged_at"`
	Table         string          `json:"table"`
	Key           string          `json:"key"`
	Rule          string          `json:"rule"`
	Winner        string          `json:"winner"`
	LocalVersion  *versionJSON    `json:"local_version"`
	RemoteVersion *versionJSON    `json:"remote_version"`
	LocalRow      json.RawMessage `json:"local_row"`
	RemoteRow     json.RawMessage `json:"remote_row"`
}

// versionJSON is the --json form of a version.
type versionJSON struct {
	Origin      casualdb.SiteID      `json:"origin"`
	HLCWall     int64                `json:"hlc_wall_us"` // µs since the Unix epoch
	HLCTime     time.Time            `json:"hlc_time"`    // the same, as a time
	HLCLogical  uint32               `json:"hlc_logical"`
	VectorClock casualdb.VectorClock `json:"vector_clock"`
}

func toVersionJSON(v *casualdb.Version) *versionJSON {
	if v == nil {
		return nil
	}
	vc := v.VC
	if vc == nil {
		vc = casualdb.VectorClock{}
	}
	return &versionJSON{Origin: v.Origin, HLCWall: v.HLC.Wall, HLCTime: v.HLC.Time(), HLCLogical: v.HLC.Logical, VectorClock: vc}
}

// writeConflictsJSON writes list as one JSON array ([] when empty).
func writeConflictsJSON(w io.Writer, list []LoggedConflict) error {
	out := make([]conflictJSON, len(list))
	for i, c := range list {
		out[i] = conflictJSON{
			ID: c.ID, LoggedAt: c.LoggedAt.UTC(), Table: c.Table, Key: c.Key, Rule: c.Rule, Winner: c.Winner,
			LocalVersion: toVersionJSON(c.LocalVersion), RemoteVersion: toVersionJSON(c.RemoteVersion),
			LocalRow: c.LocalRow, RemoteRow: c.RemoteRow,
		}
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return fmt.Errorf("write conflicts: %w", err)
	}
	return nil
}

// sinceFlag is --since: a Go duration (90m, 24h) or whole days (7d). It
// keeps the text as given for messages.
type sinceFlag struct {
	d    time.Duration
	text string
}

func (f *sinceFlag) String() string { return f.text }

func (f *sinceFlag) Set(s string) error {
	d, err := parseSince(s)
	if err != nil {
		return err
	}
	f.d, f.text = d, s
	return nil
}

// parseSince parses a positive Go duration or a number of whole days ("7d").
func parseSince(s string) (time.Duration, error) {
	bad := errors.New("not a duration (e.g. 30m, 24h, 7d)")
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days > 100000 {
			return 0, bad
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, bad
		}
	}
	if d <= 0 {
		return 0, errors.New("must be positive")
	}
	return d, nil
}

// positiveInt is an int flag that must be at least 1.
type positiveInt int

func (p *positiveInt) String() string { return strconv.Itoa(int(*p)) }

func (p *positiveInt) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return errors.New("want a whole number of at least 1")
	}
	*p = positiveInt(n)
	return nil
}
