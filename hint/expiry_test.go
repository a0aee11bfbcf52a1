package hint

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
)

func TestMissingFor(t *testing.T) {
	digests := map[casualdb.SiteID]Digest{
		"b": {Expired: []Expired{
			{For: "c", Origin: "a", Epoch: "e1", Seq: 7, LSN: 0x700, Hints: 5},
			{For: "d", Origin: "a", Epoch: "e1", Seq: 9, Hints: 1}, // for another site
			{For: "c", Origin: "d", Epoch: "e4", Seq: 3, Hints: 3},
		}},
		"d": {Expired: []Expired{{For: "c", Origin: "a", Epoch: "e1", Seq: 6, Hints: 2}}},
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
	l := MissingLog{}
	m := MissingStatus{Origin: "a", Holder: "b", Epoch: "e1", UpToSeq: 7, Missing: 5}
	l.Update(log, []MissingStatus{m})
	l.Update(log, []MissingStatus{m}) // unchanged: logged once
	if got := strings.Count(buf.String(), "level=WARN"); got != 1 {
		t.Errorf("warnings after the same report twice: %d, want 1\n%s", got, buf.String())
	}
	l.Update(log, nil)
	if !strings.Contains(buf.String(), "level=INFO msg=\"missing transactions repaired") {
		t.Errorf("no repaired line once the report cleared:\n%s", buf.String())
	}
	if len(l) != 0 {
		t.Errorf("log keeps %v after clearing", l)
	}
}
