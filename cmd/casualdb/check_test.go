package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/check"
	"github.com/casualdb/casualdb/node"
)

func TestWriteCheck(t *testing.T) {
	v := &casualdb.Version{HLC: casualdb.HLC{Wall: 17, Logical: 2}, Origin: "a"}
	res := node.CheckResult{Skipped: []string{"d"}, Report: check.Report{
		Sites: []casualdb.SiteID{"a", "b"}, CutOK: true, Differ: 1,
		Cost: map[string]check.Cost{"a": {Rows: 10, Bytes: 300}, "b": {Rows: 11, Bytes: 320}},
		Tables: []check.TableReport{
			{Table: "public.t", Buckets: 64, Differing: 1, InFlight: 2, Diffs: []check.Diff{{Key: `["7"]`, Sites: map[string]check.Entry{
				"a": {Key: `["7"]`},
				"b": {Key: `["7"]`, Present: true, Image: "35de8944bbf0c00d", Version: v, Deleted: true},
			}}}},
			{Table: "public.u", Buckets: 64},
		}}}
	var out bytes.Buffer
	writeCheck(&out, res)
	for _, want := range []string{
		"checked 2 tables across sites a, b",
		"NOT CHECKED: peers d",
		"public.t: DIFFER: 1 rows (1 of 64 buckets differ, 2 rows in flight)",
		"public.u: same (0 of 64 buckets differ, 0 rows in flight)",
		"site b read 11 rows, 320 bytes",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if !regexp.MustCompile(`(?m)^\s+7\s+a\s+absent\s+none\s*$`).MatchString(out.String()) {
		t.Errorf("no row for key 7 at a (absent, no version):\n%s", out.String())
	}
	if !strings.Contains(out.String(), "row 35de8944  17.2@a (deleted)") {
		t.Errorf("b's entry not rendered with its image and version:\n%s", out.String())
	}
	if res.Clean() {
		t.Error("a report with a differing row is clean")
	}
}
