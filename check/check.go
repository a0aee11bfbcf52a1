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
)

// Site is one site as a check sees it.
type Site interface {
	Name() casualdb.SiteID
	// Progress returns how far the site has captured and applied.
	Progress(ctx context.Context) (Progress, error)
	// Summarize and Entries run Summarize and Entries at the site.
	Summarize(ctx context.Context, table string, n int) (Summary, error)
	Entries(ctx context.Context, table string, n int, buckets []int) ([]Entry, Cost, error)
	// Repair performs a repair at the site (see Repair).
	Repair(ctx context.Context, a Action) (done bool, note string, err error)
}

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
	// Repair repairs every difference found (see repair.go).
	Repair bool
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
	Repairs  []Repaired        `json:"repairs,omitempty"`
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
}

// Diff is one key that differs, with what each site holds.
type Diff struct {
	Key   string           `json:"key"`
	Sites map[string]Entry `json:"sites"` // a site without the key has an absent entry
}

// Clean tells whether nothing differs.
func (r Report) Clean() bool {
	if r.Differ > 0 {
		return false
	}
	for _, t := range r.Tables {
		if t.Unlisted > 0 {
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
		rep.Tables = append(rep.Tables, tr)
	}
	if opts.Repair {
		repairAll(ctx, sites, &rep)
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
	type listed struct {
		entries []Entry
		cost    Cost
	}
	lists, err := each(ctx, sites, func(ctx context.Context, s Site) (listed, error) {
		es, c, err := s.Entries(ctx, table, opts.Buckets, differ)
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
		if afterCut(held, cut) {
			tr.InFlight++
			continue
		}
		tr.Diffs = append(tr.Diffs, Diff{Key: k, Sites: held})
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

// afterCut tells whether some site holds a version of the key written after
// the cut: a difference that replication may still settle.
func afterCut(held map[string]Entry, cut map[casualdb.SiteID]Cut) bool {
	for _, e := range held {
		if e.Version == nil {
			continue
		}
		c, ok := cut[e.Version.Origin]
		if !ok || e.OriginLSN > c.lsn {
			return true
		}
	}
	return false
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
