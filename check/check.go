// Package check compares the replicated tables of every live site without
// stopping writes, and lists the rows that differ with each site's version
// (`casualdb check`).
//
// It works at a stable cut: it reads how far every site has captured its
// own transactions, waits until every site has applied every other site's
// transactions up to there, then compares digests of buckets of keys
// (digest.go): sites exchange a few bytes per bucket, not rows. Only the
// buckets whose digests differ are listed key by key. A key that differs
// only because a site holds a version written after the cut (not yet
// everywhere, which is normal while writes go on) is counted as in flight,
// not as a difference.
//
// The sites are reached through the Site interface: the sidecar runs the
// queries on its own database for itself, and asks its peers over NATS
// (node wires that); this package does no transport.
package check

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
)

// Progress is how far a site is: the last transaction it captured into its
// outbox, and what it has applied from every other origin.
type Progress struct {
	Epoch   string                          `json:"epoch"`    // of its outbox
	LastSeq uint64                          `json:"last_seq"` // its last captured transaction's outbox sequence
	LastLSN uint64                          `json:"last_lsn"` // that transaction's commit LSN
	Applied map[casualdb.SiteID]AppliedFrom `json:"applied"`
}

// AppliedFrom is how far a site has applied one origin.
type AppliedFrom struct {
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
}

// Options tune a check.
type Options struct {
	Tables  []string      // CasualDB names (schema.name)
	Buckets int           // per table; default DefaultBuckets
	CutWait time.Duration // longest wait for every site to reach the cut; default DefaultCutWait
	// MaxBuckets bounds the buckets listed key by key per table; default
	// DefaultMaxBuckets. Past it the report says how many were not listed.
	MaxBuckets int
	// Repair repairs every difference found (see repair.go), when every
	// site reached the cut.
	Repair bool
	// Policies are the tables' delete policies (default delete-wins), which
	// repair decides by.
	Policies map[string]conflict.DeletePolicy
	// NoRepair names the tables a repair cannot fix, with the reason.
	NoRepair map[string]string
}

// Defaults of Options.
const (
	DefaultBuckets    = 1024
	DefaultCutWait    = time.Minute
	DefaultMaxBuckets = 256
)

// Report is the outcome of a check.
type Report struct {
	Sites    []casualdb.SiteID `json:"sites"`
	Cut      map[string]Cut    `json:"cut"` // by origin
	CutOK    bool              `json:"cut_reached"`
	Tables   []TableReport     `json:"tables"`
	Cost     map[string]Cost   `json:"cost"` // by site: what it read
	Took     time.Duration     `json:"took_ns"`
	Differ   int               `json:"differing_rows"`
	InFlight int               `json:"in_flight_rows"`
	// Unverifiable counts differing rows whose versions come from a site
	// outside the check: whether it will still ship them is unknown.
	Unverifiable int        `json:"unverifiable_rows"`
	Repairs      []Repaired `json:"repairs,omitempty"`
}

// Cut is one origin's position at the cut.
type Cut struct {
	Epoch string `json:"epoch"`
	Seq   uint64 `json:"seq"`
	LSN   string `json:"lsn"`
	lsn   uint64
}

// TableReport is one table's outcome.
type TableReport struct {
	Table     string           `json:"table"`
	Rows      map[string]int64 `json:"rows"` // entries by site
	Buckets   int              `json:"buckets"`
	Differing int              `json:"differing_buckets"`
	Unlisted  int              `json:"unlisted_buckets,omitempty"` // differing, past MaxBuckets
	Diffs     []Diff           `json:"diffs,omitempty"`
	InFlight  int              `json:"in_flight_rows"`
	// Unverifiable: differing rows with a version of a site outside the
	// check.
	Unverifiable int `json:"unverifiable_rows,omitempty"`
	// Mismatch: the sites' tables differ in their columns; rows were not
	// compared.
	Mismatch string `json:"schema_mismatch,omitempty"`
	// Unsettled: a truncation has not reached every site; rows were not
	// compared.
	Unsettled string `json:"unsettled,omitempty"`
}

// Diff is one key that differs, with what each site holds.
type Diff struct {
	Key   string           `json:"key"`
	Sites map[string]Entry `json:"sites"` // a site without the key has an absent entry
}

// Clean tells whether nothing was found to differ.
func (r Report) Clean() bool {
	if r.Differ > 0 {
		return false
	}
	for _, t := range r.Tables {
		if t.Unlisted > 0 || t.Mismatch != "" {
			return false
		}
	}
	return true
}

// Conclusive tells whether the check saw everything it checked settled:
// every site reached the cut, no truncation was on its way, and no
// difference came from a site outside the check.
func (r Report) Conclusive() bool {
	if !r.CutOK || r.Unverifiable > 0 {
		return false
	}
	for _, t := range r.Tables {
		if t.Unsettled != "" {
			return false
		}
	}
	return true
}

// Run checks opts.Tables across sites.
func Run(ctx context.Context, sites []Site, opts Options) (Report, error) {
	start := time.Now()
	if len(sites) == 0 {
		return Report{}, errors.New("check: no sites")
	}
	if opts.Buckets <= 0 {
		opts.Buckets = DefaultBuckets
	}
	if opts.CutWait <= 0 {
		opts.CutWait = DefaultCutWait
	}
	if opts.MaxBuckets <= 0 {
		opts.MaxBuckets = DefaultMaxBuckets
	}
	rep := Report{Cost: map[string]Cost{}}
	for _, s := range sites {
		rep.Sites = append(rep.Sites, s.Name())
	}
	cut, err := stableCut(ctx, sites, opts.CutWait)
	if err != nil && !errors.Is(err, errCutNotReached) {
		return rep, err
	}
	rep.CutOK = err == nil
	rep.Cut = map[string]Cut{}
	for o, c := range cut {
		c.LSN = casualdb.FormatLSN(c.lsn)
		rep.Cut[string(o)] = c
	}
	for _, table := range opts.Tables {
		tr, err := checkTable(ctx, sites, table, opts, cut, rep.Cost)
		if err != nil {
			return rep, err
		}
		rep.Differ += len(tr.Diffs)
		rep.InFlight += tr.InFlight
		rep.Unverifiable += tr.Unverifiable
		rep.Tables = append(rep.Tables, tr)
	}
	if opts.Repair {
		repairAll(ctx, sites, &rep, opts)
	}
	rep.Took = time.Since(start)
	return rep, nil
}

var errCutNotReached = errors.New("not every site reached the cut")

// stableCut reads every site's captured position and waits (at most wait)
// until every site has applied every other one up to it.
func stableCut(ctx context.Context, sites []Site, wait time.Duration) (map[casualdb.SiteID]Cut, error) {
	ps, err := each(ctx, sites, func(ctx context.Context, s Site) (Progress, error) { return s.Progress(ctx) })
	if err != nil {
		return nil, err
	}
	cut := map[casualdb.SiteID]Cut{}
	for i, s := range sites {
		cut[s.Name()] = Cut{Epoch: ps[i].Epoch, Seq: ps[i].LastSeq, lsn: ps[i].LastLSN}
	}
	deadline := time.Now().Add(wait)
	for {
		reached := true
		for i, s := range sites {
			for o, c := range cut {
				if o == s.Name() || c.Seq == 0 {
					continue
				}
				if a := ps[i].Applied[o]; a.Epoch != c.Epoch || a.Seq < c.Seq {
					reached = false
				}
			}
		}
		if reached {
			return cut, nil
		}
		if time.Now().After(deadline) {
			return cut, errCutNotReached
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if ps, err = each(ctx, sites, func(ctx context.Context, s Site) (Progress, error) { return s.Progress(ctx) }); err != nil {
			return nil, err
		}
	}
}

// checkTable compares one table's digests and lists the differing buckets.
func checkTable(ctx context.Context, sites []Site, table string, opts Options, cut map[casualdb.SiteID]Cut, cost map[string]Cost) (TableReport, error) {
	tr := TableReport{Table: table, Rows: map[string]int64{}, Buckets: opts.Buckets}
	sums, err := each(ctx, sites, func(ctx context.Context, s Site) (Summary, error) { return s.Summarize(ctx, table, opts.Buckets) })
	if err != nil {
		return tr, err
	}
	for i, s := range sites {
		if len(sums[i].Buckets) != opts.Buckets {
			return tr, fmt.Errorf("check %s: site %s answered %d buckets, not %d", table, s.Name(), len(sums[i].Buckets), opts.Buckets)
		}
		tr.Rows[string(s.Name())] = sums[i].Cost.Rows
		addCost(cost, s.Name(), sums[i].Cost)
	}
	for i, s := range sites[1:] {
		if sums[i+1].Columns != sums[0].Columns {
			tr.Mismatch = fmt.Sprintf("columns at %s: %s; at %s: %s", sites[0].Name(), sums[0].Columns, s.Name(), sums[i+1].Columns)
			return tr, nil
		}
		if a, b := sums[0].Truncation, sums[i+1].Truncation; (a == nil) != (b == nil) || (a != nil && *a != *b) {
			tr.Unsettled = fmt.Sprintf("a truncation of the table has not reached every site (markers at %s and %s differ)", sites[0].Name(), s.Name())
			return tr, nil
		}
	}
	var differ []int
	for b := 0; b < opts.Buckets; b++ {
		for i := 1; i < len(sites); i++ {
			if sums[i].Buckets[b] != sums[0].Buckets[b] {
				differ = append(differ, b)
				break
			}
		}
	}
	tr.Differing = len(differ)
	if len(differ) == 0 {
		return tr, nil
	}
	if len(differ) > opts.MaxBuckets {
		tr.Unlisted = len(differ) - opts.MaxBuckets
		differ = differ[:opts.MaxBuckets]
	}
	// Capture's versions of what was written before now first: a row
	// written but not versioned yet is not a difference.
	since, err := each(ctx, sites, func(ctx context.Context, s Site) (uint32, error) { return s.Settle(ctx) })
	if err != nil {
		return tr, err
	}
	type listed struct {
		entries []Entry
		cost    Cost
	}
	lists, err := each(ctx, sites, func(ctx context.Context, s Site) (listed, error) {
		i := slices.Index(sites, s)
		es, c, err := s.Entries(ctx, table, opts.Buckets, Filter{Buckets: differ}, since[i])
		return listed{es, c}, err
	})
	if err != nil {
		return tr, err
	}
	byKey := map[string]map[string]Entry{}
	for i, s := range sites {
		addCost(cost, s.Name(), lists[i].cost)
		for _, e := range lists[i].entries {
			if byKey[e.Key] == nil {
				byKey[e.Key] = map[string]Entry{}
			}
			byKey[e.Key][string(s.Name())] = e
		}
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		held := byKey[k]
		for _, s := range sites {
			if _, ok := held[string(s.Name())]; !ok {
				held[string(s.Name())] = Entry{Key: k}
			}
		}
		if agree(held) {
			continue // changed between the digest and the listing, the same everywhere
		}
		switch classify(held, cut) {
		case inFlight:
			tr.InFlight++
		case unverifiable:
			tr.Unverifiable++
		default:
			tr.Diffs = append(tr.Diffs, Diff{Key: k, Sites: held})
		}
	}
	return tr, nil
}

// agree tells whether every site holds the same for a key.
func agree(held map[string]Entry) bool {
	var first *Entry
	for _, e := range held {
		if first == nil {
			first = &e
			continue
		}
		if !first.same(e) {
			return false
		}
	}
	return true
}

type class int

const (
	differs class = iota
	inFlight
	unverifiable
)

// classify tells a key the sites disagree on from one that replication may
// still settle: a row written and not versioned yet (Fresh), or a version
// (a tombstone too) written after the cut, at any site; and one whose
// versions come from a site outside the check.
func classify(held map[string]Entry, cut map[casualdb.SiteID]Cut) class {
	out := differs
	for _, e := range held {
		if e.Fresh {
			return inFlight
		}
		if e.Version == nil {
			continue
		}
		c, ok := cut[e.Version.Origin]
		switch {
		case !ok:
			out = unverifiable
		case e.OriginLSN > c.lsn:
			return inFlight
		}
	}
	return out
}

func addCost(m map[string]Cost, site casualdb.SiteID, c Cost) {
	t := m[string(site)]
	t.add(c)
	m[string(site)] = t
}

// each runs f for every site at once and returns the results in the
// sites' order, or the first error (naming the site).
func each[T any](ctx context.Context, sites []Site, f func(context.Context, Site) (T, error)) ([]T, error) {
	out := make([]T, len(sites))
	errs := make([]error, len(sites))
	var wg sync.WaitGroup
	for i, s := range sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if out[i], err = f(ctx, s); err != nil {
				errs[i] = fmt.Errorf("site %s: %w", s.Name(), err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// SortedSites returns the site names of a Diff in order.
func (d Diff) SortedSites() []string {
	out := make([]string, 0, len(d.Sites))
	for s := range d.Sites {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}
