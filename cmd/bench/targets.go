package main

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// target is one figure the project tracks, computed from this run, with the
// bound it must meet.
type target struct {
	name   string
	value  float64
	unit   string // "" for a ratio
	atMost bool   // the value must be <= limit (else >= limit)
	limit  float64
	known  bool   // false when a system or scenario it needs did not run
	why    string // why it is not known
	// caveat qualifies a known value (a pause the bench could not verify).
	caveat string
}

// pass reports whether a known value meets the bound.
func (t target) pass() bool {
	if !t.known {
		return false
	}
	if t.atMost {
		return t.value <= t.limit
	}
	return t.value >= t.limit
}

func (t target) String() string { return t.format(62) }

// format renders t with its name padded to width.
func (t target) format(width int) string {
	cmp := ">="
	if t.atMost {
		cmp = "<="
	}
	bound := fmt.Sprintf("%s %s%s", cmp, strconv.FormatFloat(t.limit, 'f', -1, 64), t.unit)
	if !t.known {
		return fmt.Sprintf("%-*s %10s   target %-9s n/a (%s)", width, t.name, none, bound, t.why)
	}
	verdict := "MISS"
	if t.pass() {
		verdict = "PASS"
	}
	s := fmt.Sprintf("%-*s %10s   target %-9s %s", width, t.name, strconv.FormatFloat(t.value, 'f', 2, 64)+t.unit, bound, verdict)
	if t.caveat != "" {
		s += " (" + t.caveat + ")"
	}
	return s
}

// scenarioOf returns the result of scenario k of the system named name, or
// nil when it did not run or failed.
func scenarioOf(rs []*systemResult, name string, k scenarioKind) *scenarioResult {
	for _, r := range rs {
		if r.spec.name != name {
			continue
		}
		if s := r.scenarios[k]; s != nil && s.err == nil {
			return s
		}
	}
	return nil
}

// computeTargets compares casualdb on three sites with pglogical.
func computeTargets(rs []*systemResult) []target {
	type pair struct{ c, p *scenarioResult }
	get := func(k scenarioKind) pair {
		return pair{scenarioOf(rs, "casualdb", k), scenarioOf(rs, "pglogical", k)}
	}
	// ratio fills t with f(casualdb) / f(pglogical).
	ratio := func(t target, p pair, f func(*scenarioResult) float64) target {
		switch {
		case p.c == nil:
			t.why = "casualdb's run is missing"
		case p.p == nil:
			t.why = "pglogical's run is missing"
		case f(p.p) <= 0:
			t.why = "pglogical's figure is zero"
		case f(p.c) <= 0:
			t.why = "casualdb's figure is zero"
		default:
			t.value, t.known = f(p.c)/f(p.p), true
		}
		return t
	}
	// alone fills t with f(casualdb).
	alone := func(t target, s *scenarioResult, f func(*scenarioResult) float64) target {
		if s == nil {
			t.why = "casualdb's run is missing"
			return t
		}
		t.value, t.known = f(s), true
		return t
	}
	tps := func(s *scenarioResult) float64 { return s.tps }
	p99 := func(s *scenarioResult) float64 { return msOf(s.lag.p99) }
	sat, thr, bl := get(scenarioSat4), get(scenarioThrottled), get(scenarioBacklog)
	replay := ratio(target{name: "backlog: replay rate at b, casualdb / pglogical", limit: 1.5}, bl,
		func(s *scenarioResult) float64 {
			if s.replay <= 0 {
				return 0
			}
			return float64(s.txs) / s.replay.Seconds()
		})
	if replay.known && len(bl.c.notes)+len(bl.p.notes) > 0 {
		replay.caveat = "see the notes under the backlog table"
	}
	captured := target{name: "saturation 4 clients: casualdb commit -> captured p99 (bucket bound)", unit: " ms", atMost: true, limit: 50}
	if sat.c == nil {
		captured.why = "casualdb's run is missing"
	} else if p99, ok := sat.c.stages.p99[stageKey{"a", "captured"}]; !ok {
		captured.why = "no delay histogram of site a's captured stage"
	} else {
		// Bucket bounds are decimal seconds: in microseconds, they are
		// whole numbers again.
		captured.value, captured.known = math.Round(p99*1e6)/1e3, true
	}
	return []target{
		ratio(target{name: "saturation 4 clients: origin tps, casualdb / pglogical", limit: 0.9}, sat, tps),
		ratio(target{name: "saturation 4 clients: lag p99, casualdb / pglogical", atMost: true, limit: 2}, sat, p99),
		alone(target{name: "saturation 4 clients: casualdb catch-up", unit: " s", atMost: true, limit: 1}, sat.c,
			func(s *scenarioResult) float64 { return s.catchUp.Seconds() }),
		captured,
		alone(target{name: "throttled: casualdb lag p50", unit: " ms", atMost: true, limit: 2}, thr.c,
			func(s *scenarioResult) float64 { return msOf(s.lag.p50) }),
		ratio(target{name: "throttled: lag p99, casualdb / pglogical", atMost: true, limit: 2}, thr, p99),
		ratio(target{name: "throttled: CPU of sidecars + postgres per tx, casualdb / pglogical", atMost: true, limit: 1.5}, thr,
			func(s *scenarioResult) float64 {
				if !s.hasCPU || s.txs <= 0 {
					return 0
				}
				return s.cpu.system() / float64(s.txs)
			}),
		replay,
	}
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
