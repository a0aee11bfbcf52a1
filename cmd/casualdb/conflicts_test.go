package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/meta"
)

// conflictsSite is a PostgreSQL with the casualdb schema and three logged
// conflicts: on public.orders 30 minutes ago, on public.accounts key 1 an
// hour ago and key 2 two days ago.
type conflictsSite struct {
	pg     *pgtest.Server
	config string // path of a configuration file naming the database
}

var (
	wallLocal  = time.Date(2024, 5, 1, 12, 0, 1, 123456000, time.UTC)
	wallRemote = time.Date(2024, 5, 1, 12, 0, 2, 1000, time.UTC)
	longNote   = strings.Repeat("ü", 150)
)

func newConflictsSite(t *testing.T) *conflictsSite {
	t.Helper()
	pg := pgtest.NewServer(t, "conflicts")
	conn := pgtest.Connect(t, pg.DSN())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := meta.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	eu1 := casualdb.Version{HLC: casualdb.HLC{Wall: wallLocal.UnixMicro()}, Origin: "eu1", VC: casualdb.VectorClock{"eu1": 3}}
	us1 := casualdb.Version{HLC: casualdb.HLC{Wall: wallRemote.UnixMicro(), Logical: 1}, Origin: "us1", VC: casualdb.VectorClock{"eu1": 2, "us1": 1}}
	logged := []struct {
		ago time.Duration
		c   meta.Conflict
	}{
		{time.Hour, meta.Conflict{Table: "public.accounts", Key: `["1"]`, Rule: "lww", Winner: "remote", LocalVersion: eu1, RemoteVersion: us1,
			LocalRow:  json.RawMessage(`{"id": 1, "owner": "ann", "balance": "10.00"}`),
			RemoteRow: json.RawMessage(`{"id": "1", "owner": "ann", "balance": "12.00"}`)}},
		{30 * time.Minute, meta.Conflict{Table: "public.orders", Key: `["7","a"]`, Rule: "lww", Winner: "local", LocalVersion: us1, RemoteVersion: eu1,
			LocalRow: json.RawMessage(fmt.Sprintf(`{"id": 7, "note": %q}`, longNote))}}, // remote: a delete
		{48 * time.Hour, meta.Conflict{Table: "public.accounts", Key: `["2"]`, Rule: "lww", Winner: "remote", LocalVersion: eu1, RemoteVersion: us1,
			LocalRow: json.RawMessage(`{"id": 2}`), RemoteRow: json.RawMessage(`{"id": "2"}`)}},
	}
	for _, l := range logged {
		if err := meta.LogConflict(ctx, conn, l.c); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `UPDATE casualdb.conflict_log SET logged_at = now() - make_interval(secs => $1) WHERE id = (SELECT max(id) FROM casualdb.conflict_log)`, l.ago.Seconds()); err != nil {
			t.Fatal(err)
		}
	}
	return &conflictsSite{pg: pg, config: writeConfig(t, pg.DSN())}
}

func writeConfig(t *testing.T, dsn string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "casualdb.yml")
	if err := os.WriteFile(path, []byte("site: a\ndatabase:\n  dsn: "+dsn+"\n  connect_timeout: 5s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runConflicts runs `casualdb conflicts args...` with env as the
// environment and returns its stdout.
func runConflicts(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var out, errOut strings.Builder
	m := &Main{Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return env[k] }}
	err := m.Run(t.Context(), append([]string{"conflicts"}, args...))
	return out.String(), err
}

func (s *conflictsSite) text(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runConflicts(t, nil, append([]string{"--config", s.config}, args...)...)
	if err != nil {
		t.Fatalf("conflicts %v: %v", args, err)
	}
	return out
}

func (s *conflictsSite) json(t *testing.T, args ...string) []conflictJSON {
	t.Helper()
	out := s.text(t, append([]string{"--json"}, args...)...)
	var list []conflictJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("conflicts --json %v: stdout is not a JSON array: %v\n%s", args, err, out)
	}
	if list == nil {
		t.Fatalf("conflicts --json %v: got %q, want an array", args, out)
	}
	return list
}

// keys returns the table and key of each listed conflict, in order.
func keys(list []conflictJSON) []string {
	var out []string
	for _, c := range list {
		out = append(out, c.Table+" "+c.Key)
	}
	return out
}

func TestMain_Conflicts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	s := newConflictsSite(t)

	t.Run("text", func(t *testing.T) {
		out := s.text(t)
		lines := strings.Split(out, "\n")
		header := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  `)
		want := []string{
			"2 conflicts in the last 24h, newest first",
			"",
			"public.orders  key (7,a)  rule lww  winner local",
			"* local   us1 2024-05-01T12:00:02.000001Z +1  " + abbreviate(fmt.Sprintf(`{"id":7,"note":%q}`, longNote), rowImageWidth),
			"  remote  eu1 2024-05-01T12:00:01.123456Z +0  (delete)",
			"",
			"public.accounts  key 1  rule lww  winner remote",
			`  local   eu1 2024-05-01T12:00:01.123456Z +0  {"id":1,"owner":"ann","balance":"10.00"}`,
			`* remote  us1 2024-05-01T12:00:02.000001Z +1  {"id":"1","owner":"ann","balance":"12.00"}`,
			"",
		}
		if len(lines) != len(want) {
			t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), out)
		}
		for i := range want {
			got := lines[i]
			if strings.HasSuffix(want[i], "winner local") || strings.HasSuffix(want[i], "winner remote") {
				if !header.MatchString(got) {
					t.Errorf("line %d: %q does not start with an RFC 3339 UTC time", i+1, got)
				}
				got = header.ReplaceAllString(got, "")
			}
			if got != want[i] {
				t.Errorf("line %d:\n got %q\nwant %q", i+1, got, want[i])
			}
		}
		if img := lines[3][strings.LastIndex(lines[3], "  ")+2:]; utf8.RuneCountInString(img) != rowImageWidth || !strings.HasSuffix(img, "…") {
			t.Errorf("long row image: got %d characters %q, want %d ending in …", utf8.RuneCountInString(img), img, rowImageWidth)
		}
	})

	t.Run("json", func(t *testing.T) {
		list := s.json(t)
		if got, want := keys(list), []string{`public.orders ["7","a"]`, `public.accounts ["1"]`}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("got %q, want %q", got, want)
		}
		o, a := list[0], list[1]
		if o.ID <= a.ID || o.Rule != "lww" || o.Winner != "local" || a.Winner != "remote" {
			t.Errorf("id, rule, winner: got %+v", []conflictJSON{o, a})
		}
		if age := time.Since(a.LoggedAt); age < 50*time.Minute || age > 70*time.Minute || a.LoggedAt.Location() != time.UTC {
			t.Errorf("logged_at %s: want about an hour ago, in UTC", a.LoggedAt)
		}
		lv := a.LocalVersion
		if lv == nil || lv.Origin != "eu1" || lv.HLCWall != wallLocal.UnixMicro() || !lv.HLCTime.Equal(wallLocal) || lv.HLCLogical != 0 || lv.VectorClock["eu1"] != 3 {
			t.Errorf("local_version: got %+v", lv)
		}
		rv := a.RemoteVersion
		if rv == nil || rv.Origin != "us1" || rv.HLCLogical != 1 || !rv.HLCTime.Equal(wallRemote) || rv.VectorClock["us1"] != 1 || rv.VectorClock["eu1"] != 2 {
			t.Errorf("remote_version: got %+v", rv)
		}
		var row struct {
			ID   int    `json:"id"`
			Note string `json:"note"`
		}
		if err := json.Unmarshal(o.LocalRow, &row); err != nil || row.ID != 7 || row.Note != longNote {
			t.Errorf("local_row of the order: got %s (%v), want the whole row", o.LocalRow, err)
		}
		if string(o.RemoteRow) != "null" {
			t.Errorf("remote_row of a delete: got %s, want null", o.RemoteRow)
		}
	})

	t.Run("since", func(t *testing.T) {
		for _, tt := range []struct {
			since string
			want  []string
		}{
			{"45m", []string{`public.orders ["7","a"]`}},
			{"72h", []string{`public.orders ["7","a"]`, `public.accounts ["1"]`, `public.accounts ["2"]`}},
			{"3d", []string{`public.orders ["7","a"]`, `public.accounts ["1"]`, `public.accounts ["2"]`}},
		} {
			if got := keys(s.json(t, "--since", tt.since)); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("--since %s: got %q, want %q", tt.since, got, tt.want)
			}
		}
		if out := s.text(t, "--since", "3d"); !strings.HasPrefix(out, "3 conflicts in the last 3d, newest first\n") {
			t.Errorf("--since 3d text: got\n%s", out)
		}
	})

	t.Run("table", func(t *testing.T) {
		want := []string{`public.accounts ["1"]`, `public.accounts ["2"]`}
		for _, name := range []string{"accounts", "public.accounts"} {
			if got := keys(s.json(t, "--since", "3d", "--table", name)); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("--table %s: got %q, want %q", name, got, want)
			}
		}
		if out := s.text(t, "--table", "orders"); !strings.HasPrefix(out, "1 conflict on public.orders in the last 24h\n") || strings.Contains(out, "public.accounts") {
			t.Errorf("--table orders text: got\n%s", out)
		}
	})

	t.Run("limit", func(t *testing.T) {
		if got, want := keys(s.json(t, "--since", "3d", "--limit", "2")), []string{`public.orders ["7","a"]`, `public.accounts ["1"]`}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("--limit 2: got %q, want %q", got, want)
		}
		out := s.text(t, "--limit", "1")
		if !strings.HasPrefix(out, "1 conflict in the last 24h\n") || !strings.HasSuffix(out, "\nmore conflicts in the last 24h than shown: raise --limit or narrow --since or --table\n") {
			t.Errorf("--limit 1 text: got\n%s", out)
		}
		if out := s.text(t, "--limit", "2"); strings.Contains(out, "more conflicts") {
			t.Errorf("--limit 2 (all there are): got a note of more\n%s", out)
		}
	})

	t.Run("empty", func(t *testing.T) {
		if got, want := s.text(t, "--since", "10m"), "no conflicts in the last 10m\n"; got != want {
			t.Errorf("text: got %q, want %q", got, want)
		}
		if got, want := s.text(t, "--table", "nosuch"), "no conflicts on public.nosuch in the last 24h\n"; got != want {
			t.Errorf("text: got %q, want %q", got, want)
		}
		if got, want := s.text(t, "--json", "--table", "nosuch"), "[]\n"; got != want {
			t.Errorf("json: got %q, want %q", got, want)
		}
	})

	t.Run("environment overrides the file", func(t *testing.T) {
		port, err := pgtest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		config := writeConfig(t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres", port))
		out, err := runConflicts(t, map[string]string{"CASUALDB_DSN": s.pg.DSN()}, "--config", config, "--table", "orders")
		if err != nil || !strings.HasPrefix(out, "1 conflict on public.orders") {
			t.Errorf("got %v\n%s", err, out)
		}
	})

	t.Run("errors", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.pg.CreateDatabase(ctx, "noschema"); err != nil {
			t.Fatal(err)
		}
		closed, err := pgtest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name string
			args []string
			is   error
			want []string
		}{
			{"bad duration", []string{"--since", "yesterday"}, nil, []string{`invalid value "yesterday" for flag -since: not a duration`}},
			{"zero duration", []string{"--since", "0s"}, nil, []string{`invalid value "0s" for flag -since: must be positive`}},
			{"negative days", []string{"--since", "-2d"}, nil, []string{`invalid value "-2d" for flag -since: must be positive`}},
			{"bad limit", []string{"--limit", "0"}, nil, []string{`invalid value "0" for flag -limit`}},
			{"bad table", []string{"--table", "public."}, casualdb.ErrConfig, []string{"--table", `"public."`}},
			{"stray argument", []string{"accounts"}, nil, []string{`unexpected argument "accounts"`}},
			{"--tables for --table", []string{"--tables", "accounts"}, nil, []string{"use --table NAME"}},
			{"schema not installed", []string{"--dsn", s.pg.DSNFor("noschema")}, meta.ErrNotInstalled, []string{`database "noschema"`, "casualdb.conflict_log", "casualdb run"}},
			{"unreachable database", []string{"--dsn", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres", closed)}, nil, []string{"connect to database (database.dsn)"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				out, err := runConflicts(t, nil, append([]string{"--config", s.config}, tt.args...)...)
				if err == nil {
					t.Fatalf("got no error, want one; stdout:\n%s", out)
				}
				if tt.is != nil && !errors.Is(err, tt.is) {
					t.Errorf("got %v, want it to wrap %v", err, tt.is)
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				if out != "" {
					t.Errorf("stdout: got %q, want nothing", out)
				}
			})
		}
	})
}

func TestConflicts_ParseSince(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"24h", 24 * time.Hour, ""},
		{"90m", 90 * time.Minute, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"7d", 7 * 24 * time.Hour, ""},
		{"1d", 24 * time.Hour, ""},
		{"", 0, "not a duration"},
		{"d", 0, "not a duration"},
		{"1.5d", 0, "not a duration"},
		{"24", 0, "not a duration"},
		{"yesterday", 0, "not a duration"},
		{"0d", 0, "must be positive"},
		{"-1h", 0, "must be positive"},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in)
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("parseSince(%q): got %v, %v; want %v", tt.in, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("parseSince(%q): got %v, %v; want error %q", tt.in, got, err, tt.err)
		}
	}
}

func TestConflicts_Abbreviate(t *testing.T) {
	tests := []struct {
		in    string
		width int
		want  string
	}{
		{"abc", 3, "abc"},
		{"abcd", 3, "ab…"},
		{"", 3, ""},
		{"üüüü", 3, "üü…"},
		{"üüü", 3, "üüü"},
		{"ab", 1, "…"},
		{"ab", 0, ""},
	}
	for _, tt := range tests {
		if got := abbreviate(tt.in, tt.width); got != tt.want {
			t.Errorf("abbreviate(%q, %d): got %q, want %q", tt.in, tt.width, got, tt.want)
		}
	}
}

func TestConflicts_ShortVersion(t *testing.T) {
	v := &casualdb.Version{HLC: casualdb.HLC{Wall: time.Date(2024, 5, 1, 12, 0, 2, 0, time.UTC).UnixMicro(), Logical: 4}, Origin: "us1"}
	if got, want := shortVersion(v), "us1 2024-05-01T12:00:02.000000Z +4"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := shortVersion(nil), "(no version)"; got != want {
		t.Errorf("nil: got %q, want %q", got, want)
	}
}
