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
	"github.com/casualdb/casualdb/meta"
	"github.com/casualdb/casualdb/node"
)

// conflictsQueryTimeout bounds the query of `casualdb conflicts` (the
// connection is bounded by database.connect_timeout).
const conflictsQueryTimeout = 30 * time.Second

// rowImageWidth is how many characters of a row image the text output shows.
const rowImageWidth = 80

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
	q := meta.ConflictFilter{Since: cf.since.d, Limit: int(cf.limit)}
	if cf.table != "" {
		t, err := capture.ParseTable(cf.table)
		if err != nil {
			return fmt.Errorf("--table: %w", err)
		}
		q.Table = t.String()
	}
	// One more than asked tells the text output that there are more.
	q.Limit++
	list, err := listConflicts(ctx, cfg, q)
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

// listConflicts connects to the site's database and returns the conflicts f
// selects, newest first.
func listConflicts(ctx context.Context, cfg node.Config, f meta.ConflictFilter) ([]meta.LoggedConflict, error) {
	conn, err := connect(ctx, cfg.Database.DSN, cfg.Database.ConnectTimeout, "conflicts")
	if err != nil {
		return nil, err
	}
	defer closeConn(conn)
	qctx, cancel := context.WithTimeout(ctx, conflictsQueryTimeout)
	defer cancel()
	list, err := meta.FindConflicts(qctx, conn, f)
	if err != nil {
		return nil, noSchema(conn, "casualdb.conflict_log", err)
	}
	return list, nil
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
func writeConflictsText(w io.Writer, list []meta.LoggedConflict, scope string, more bool) error {
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
			c.LoggedAt.UTC().Format(time.RFC3339), c.Table, casualdb.DisplayKey(c.Key), c.Rule, c.Winner)
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
func writeConflictsJSON(w io.Writer, list []meta.LoggedConflict) error {
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
