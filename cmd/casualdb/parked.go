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
	"github.com/casualdb/casualdb/node"
	"github.com/casualdb/casualdb/parked"
)

// parkedTimeout bounds each database step of `casualdb parked`: the
// listing, a discard, the transaction replaying one entry (the connection is
// bounded by database.connect_timeout).
const parkedTimeout = 30 * time.Second

// parkedKeyWidth is how many characters of a key the text listing shows
// (reasons: parked.ReasonWidth).
const parkedKeyWidth = 40

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

func (m *Main) listParked(ctx context.Context, cfg node.Config, pf parkedFlags) error {
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
				key = abbreviate(oneLine(casualdb.DisplayKey(p.Key)), parkedKeyWidth)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.ParkedAt.UTC().Format(time.RFC3339),
				orDash(oneLine(string(p.Origin))), orDash(oneLine(p.Table)), orDash(key), kindText(p.Decode().Kind),
				parked.ShortReason(p.Reason))
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
func (m *Main) discardParked(ctx context.Context, cfg node.Config, ids []int64) error {
	conn, err := connect(ctx, cfg.Database.DSN, cfg.Database.ConnectTimeout, "parked")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	dctx, cancel := context.WithTimeout(ctx, parkedTimeout)
	defer cancel()
	if err := parked.Discard(dctx, conn, ids); err != nil {
		return fmt.Errorf("parked discard: %w", noSchema(conn, "casualdb.parked", err))
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

// ---- replay

// replayParked replays each id in its own transaction and prints a line
// for each: on stdout when it was written, on stderr when not (it then
// stays parked). The error reports the ids not replayed.
func (m *Main) replayParked(ctx context.Context, cfg node.Config, ids []int64) error {
	conn, err := connect(ctx, cfg.Database.DSN, cfg.Database.ConnectTimeout, "parked")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	var failed []int64
	for i, id := range ids {
		rctx, cancel := context.WithTimeout(ctx, parkedTimeout)
		done, err := parked.Replay(rctx, conn, cfg.Database.Publication, id)
		cancel()
		if err == nil {
			fmt.Fprintf(m.Stdout, "replayed %d: %s\n", id, done)
			continue
		}
		err = noSchema(conn, "casualdb.parked", err)
		if errors.Is(err, meta.ErrNotInstalled) || ctx.Err() != nil || conn.IsClosed() {
			// Nothing more can be done on this connection.
			return fmt.Errorf("parked replay %d: %w (not attempted: %s)", id, err, orNone(joinIDs(ids[i+1:])))
		}
		failed = append(failed, id)
		if errors.Is(err, parked.ErrNoEntry) {
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
