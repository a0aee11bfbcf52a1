package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/node"
)

// errDiffer is the outcome of a check that found differing rows: the
// command exits non-zero.
var errDiffer = errors.New("the sites differ")

// errInconclusive is the outcome of a check that found nothing but could
// not see everything settled: the command exits non-zero too.
var errInconclusive = errors.New("the check is inconclusive")

// checkCmd asks the running sidecar (--admin, or admin.listen of --config)
// to compare the replicated tables across the sites it reaches, and prints
// what differs.
func (m *Main) checkCmd(ctx context.Context, args []string) error {
	fs, af := m.adminFlags("check", "print the report as JSON")
	buckets := fs.Int("buckets", 0, "buckets of keys per table (default 1024)")
	timeout := fs.Duration("timeout", 10*time.Minute, "longest the check may take")
	repair := fs.Bool("repair", false, "repair every differing row: the site holding the winning version writes it again, and it replicates")
	var tables []string
	fs.Func("table", "check only this table (repeatable; default every replicated table)", func(s string) error {
		tables = append(tables, s)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	q := url.Values{}
	for _, t := range tables {
		q.Add("table", t)
	}
	if *repair {
		q.Set("repair", "1")
	}
	if *buckets != 0 {
		q.Set("buckets", strconv.Itoa(*buckets))
	}
	path := "/check"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	method := http.MethodGet
	if *repair {
		method = http.MethodPost // it writes
	}
	body, err := m.adminDo(ctx, af, method, path, *timeout)
	if err != nil {
		return err
	}
	var res node.CheckResult
	if err := json.Unmarshal(body, &res); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	if af.asJSON {
		if _, err := m.Stdout.Write(body); err != nil {
			return err
		}
	} else {
		writeCheck(m.Stdout, res)
	}
	if res.Clean() && (!res.Conclusive() || len(res.Skipped) > 0) {
		return fmt.Errorf("%w (cut reached: %v, rows from sites outside the check: %d, peers not checked: %d)", errInconclusive, res.CutOK, res.Unverifiable, len(res.Skipped))
	}
	if !res.Clean() {
		if *repair {
			done := 0
			for _, r := range res.Repairs {
				if r.Done {
					done++
				}
			}
			return fmt.Errorf("%w: %d rows (%d repairs written; run the check again once they have replicated)", errDiffer, res.Differ, done)
		}
		return fmt.Errorf("%w: %d rows", errDiffer, res.Differ)
	}
	return nil
}

// writeCheck renders a check's report for people.
func writeCheck(w io.Writer, res node.CheckResult) {
	sites := make([]string, len(res.Sites))
	for i, s := range res.Sites {
		sites[i] = string(s)
	}
	fmt.Fprintf(w, "checked %d tables across sites %s in %s", len(res.Tables), strings.Join(sites, ", "), res.Took.Round(time.Millisecond))
	if !res.CutOK {
		fmt.Fprint(w, " (INCONCLUSIVE: not every site had applied up to the cut in time; rows a lagging site has not applied count as differing, and nothing is repaired)")
	}
	fmt.Fprintln(w)
	if len(res.Skipped) > 0 {
		fmt.Fprintf(w, "  NOT CHECKED: peers %s\n", strings.Join(res.Skipped, ", "))
	}
	for _, t := range res.Tables {
		if t.Mismatch != "" {
			fmt.Fprintf(w, "%s: SCHEMA DIFFERS, rows not compared: %s\n", t.Table, t.Mismatch)
			continue
		}
		if t.Unsettled != "" {
			fmt.Fprintf(w, "%s: not compared: %s\n", t.Table, t.Unsettled)
			continue
		}
		state := "same"
		switch {
		case len(t.Diffs) > 0 || t.Unlisted > 0:
			state = fmt.Sprintf("DIFFER: %d rows", len(t.Diffs))
			if t.Unlisted > 0 {
				state += fmt.Sprintf(" and %d more buckets not listed", t.Unlisted)
			}
		case t.InFlight > 0:
			state = "same up to the cut"
		}
		fmt.Fprintf(w, "%s: %s (%d of %d buckets differ, %d rows in flight", t.Table, state, t.Differing, t.Buckets, t.InFlight)
		if t.Unverifiable > 0 {
			fmt.Fprintf(w, ", %d rows from sites outside the check", t.Unverifiable)
		}
		fmt.Fprintln(w, ")")
		if len(t.Diffs) == 0 {
			continue
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  KEY\tSITE\tROW\tVERSION")
		for _, d := range t.Diffs {
			for i, s := range d.SortedSites() {
				e := d.Sites[s]
				key := ""
				if i == 0 {
					key = casualdb.DisplayKey(d.Key)
				}
				row := "absent"
				if e.Present {
					row = "row " + e.Image[:min(8, len(e.Image))]
				}
				ver := "none"
				if e.Version != nil {
					ver = fmt.Sprintf("%d.%d@%s", e.Version.HLC.Wall, e.Version.HLC.Logical, e.Version.Origin)
					if e.Deleted {
						ver += " (deleted)"
					}
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", key, s, row, ver)
			}
		}
		tw.Flush()
	}
	for _, r := range res.Repairs {
		if r.Done {
			fmt.Fprintf(w, "repaired %s %s: %s at site %s (it replicates like any write)\n", r.Table, casualdb.DisplayKey(r.Key), r.Op, r.Site)
		} else {
			fmt.Fprintf(w, "NOT REPAIRED %s %s: %s\n", r.Table, casualdb.DisplayKey(r.Key), r.Note)
		}
	}
	for _, s := range sites {
		c := res.Cost[s]
		fmt.Fprintf(w, "site %s read %d rows, %d bytes\n", s, c.Rows, c.Bytes)
	}
}
