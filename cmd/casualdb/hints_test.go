package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
)

func TestMissingFor(t *testing.T) {
	digests := map[casualdb.SiteID]gossipState{
		"b": {Expired: []expiredHints{
			{For: "c", Origin: "a", Epoch: "e1", Seq: 7, LSN: 0x700, Hints: 5},
			{For: "d", Origin: "a", Epoch: "e1", Seq: 9, Hints: 1}, // for another site
			{For: "c", Origin: "d", Epoch: "e4", Seq: 3, Hints: 3},
		}},
		"d": {Expired: []expiredHints{{For: "c", Origin: "a", Epoch: "e1", Seq: 6, Hints: 2}}},
	}
	tests := []struct {
		name    string
		applied map[casualdb.SiteID]apply.OriginStats
		want    []string // origin/holder/missing
	}{
		{"nothing applied", nil, []string{"a/b/7", "a/d/6", "d/b/3"}},
		{"behind in the same epoch", map[casualdb.SiteID]apply.OriginStats{"a": {Seq: 2, Epoch: "e1"}, "d": {Seq: 1, Epoch: "e4"}},
			[]string{"a/b/5", "a/d/4", "d/b/2"}},
		{"another epoch counts as nothing", map[casualdb.SiteID]apply.OriginStats{"a": {Seq: 100, Epoch: "e2"}},
			[]string{"a/b/7", "a/d/6", "d/b/3"}},
		{"part repaired", map[casualdb.SiteID]apply.OriginStats{"a": {Seq: 6, Epoch: "e1"}, "d": {Seq: 3, Epoch: "e4"}},
			[]string{"a/b/1"}},
		{"all repaired", map[casualdb.SiteID]apply.OriginStats{"a": {Seq: 8, Epoch: "e1"}, "d": {Seq: 3, Epoch: "e4"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, m := range missingFor("c", digests, tt.applied) {
				got = append(got, fmt.Sprintf("%s/%s/%d", m.Origin, m.Holder, m.Missing))
				if m.UpToSeq-m.AppliedSeq != m.Missing {
					t.Errorf("%+v: missing is not up_to_seq - applied_seq", m)
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMissingLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l := missingLog{}
	m := MissingStatus{Origin: "a", Holder: "b", Epoch: "e1", UpToSeq: 7, Missing: 5}
	l.update(log, []MissingStatus{m})
	l.update(log, []MissingStatus{m}) // unchanged: logged once
	if got := strings.Count(buf.String(), "level=WARN"); got != 1 {
		t.Errorf("warnings after the same report twice: %d, want 1\n%s", got, buf.String())
	}
	l.update(log, nil)
	if !strings.Contains(buf.String(), "level=INFO msg=\"missing transactions repaired") {
		t.Errorf("no repaired line once the report cleared:\n%s", buf.String())
	}
	if len(l) != 0 {
		t.Errorf("log keeps %v after clearing", l)
	}
}

func TestPrintStatus_Hints(t *testing.T) {
	m := MissingStatus{Origin: "a", Holder: "b", Epoch: "e1", UpToSeq: 7, AppliedSeq: 2, Missing: 5, HintsExpired: 5}
	st := Status{Site: "c", Healthy: true, Missing: []MissingStatus{m}, Warnings: []string{m.warning()},
		HintExpiries: []HintExpiryStatus{{For: "d", Origin: "a", Epoch: "e1", Hints: 3, FirstSeq: 4, LastSeq: 6}},
		Peers:        map[string]PeerStatus{"d": {State: "dead", HintsHeld: 11, HintsHanded: 4}},
		Origins:      map[string]OriginStatus{"d": {Applied: 9, Held: 2}}}
	var out bytes.Buffer
	printStatus(&out, st)
	for _, want := range []string{
		"WARNING: missing 5 transactions from origin a up to seq 7 (hints expired at holder b); they come only from a's outbox or a repair",
		"missing transactions (hints for this site expired",
		"hints expired here (cluster.hint_retention):",
		"open: the site has not applied past them",
		"WAITING HERE  HINTS HELD  HANDED OFF",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("casualdb status output lacks %q:\n%s", want, out.String())
		}
	}
	// The peer's row: 9 applied from it, 2 of its transactions waiting
	// here, 11 hints held for it, 4 handed off.
	if !regexp.MustCompile(`(?m)^d\s+dead\s+down\s+0\s+\?\s+\?\s+9\s+0\.000\s+2\s+11\s+4\s*$`).MatchString(out.String()) {
		t.Errorf("casualdb status lacks d's row with its hints:\n%s", out.String())
	}
}
