package main

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(i + 1)
	}
	for _, tc := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one value", []time.Duration{ms(7)}, 0.99, ms(7)},
		{"median of two", []time.Duration{ms(1), ms(2)}, 0.5, ms(1)},
		{"p50 of 1..100", hundred, 0.50, ms(50)},
		{"p99 of 1..100", hundred, 0.99, ms(99)},
		{"p100 of 1..100", hundred, 1, ms(100)},
		{"tiny p", hundred, 0.001, ms(1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.sorted, tc.p); got != tc.want {
				t.Errorf("percentile(%v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
}

func TestSummarise(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	probes := []probeLag{
		{id: 1, lags: []time.Duration{ms(1), ms(3)}},
		{id: 2, lags: []time.Duration{ms(2), -1}},
		{id: 3, lags: []time.Duration{ms(10), ms(4)}},
	}
	got := summarise(probes, 2)
	want := lagStats{probes: 3, samples: 5, missing: 1, duplicates: 2, p50: ms(3), p99: ms(10), pmax: ms(10)}
	if got != want {
		t.Errorf("summarise = %+v, want %+v", got, want)
	}
	slow, fast, ok := probes[1].slowestFastest()
	if !ok || slow != ms(2) || fast != ms(2) {
		t.Errorf("slowestFastest of a probe at one peer = %v, %v, %v; want 2ms, 2ms, true", slow, fast, ok)
	}
	if _, _, ok := (probeLag{lags: []time.Duration{-1}}).slowestFastest(); ok {
		t.Error("slowestFastest of a probe that arrived nowhere reports ok")
	}
}

func TestParsePgbench(t *testing.T) {
	out := []byte(`transaction type: multiple scripts
scaling factor: 1
number of clients: 4
number of transactions per client: 5000
number of transactions actually processed: 20000/20000
latency average = 0.394 ms
initial connection time = 5.417 ms
tps = 10153.342417 (without initial connection time)
SQL script 1: /tmp/kv.sql
`)
	got, err := parsePgbench(out)
	if err != nil {
		t.Fatal(err)
	}
	if got.txs != 20000 || got.tps != 10153.342417 {
		t.Errorf("parsePgbench = %+v, want 20000 transactions at 10153.342417 tps", got)
	}
	if _, err := parsePgbench([]byte("pgbench: error: connection failed")); err == nil {
		t.Error("parsePgbench of an error message: no error")
	}
}

// results builds a run with casualdb's and pglogical's scenarios.
func results(cas, pgl map[scenarioKind]*scenarioResult) []*systemResult {
	return []*systemResult{
		{spec: systemSpec{name: "casualdb", kind: kindCasualDB, sites: 3, scenarios: allScenarios}, scenarios: cas},
		{spec: systemSpec{name: "pglogical", kind: kindPglogical, sites: 3, scenarios: allScenarios}, scenarios: pgl},
	}
}

func TestComputeTargets(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	cpu := func(sidecars, servers float64) cpuUse {
		return cpuUse{wall: 30, sidecars: []float64{sidecars}, servers: []float64{servers}}
	}
	cas := map[scenarioKind]*scenarioResult{
		scenarioSat4: {tps: 9500, lag: lagStats{p99: ms(3)}, catchUp: 500 * time.Millisecond,
			stages: stages{p99: map[stageKey]float64{{"a", "captured"}: 0.075, {"b", "applied"}: 0.01}}},
		scenarioThrottled: {txs: 30000, lag: lagStats{p50: ms(2.5), p99: ms(1)}, cpu: cpu(3, 6), hasCPU: true},
		scenarioBacklog:   {txs: 1000, replay: time.Second},
	}
	pgl := map[scenarioKind]*scenarioResult{
		scenarioSat4:      {tps: 10000, lag: lagStats{p99: ms(1)}},
		scenarioThrottled: {txs: 30000, lag: lagStats{p99: ms(1)}, cpu: cpu(0, 6), hasCPU: true},
		scenarioBacklog:   {txs: 1000, replay: 2 * time.Second, notes: []string{"pause NOT verified"}},
	}
	got := computeTargets(results(cas, pgl))
	want := []struct {
		value float64
		pass  bool
	}{
		{0.95, true}, // tps ratio >= 0.9
		{3, false},   // sat p99 ratio <= 2
		{0.5, true},  // catch-up <= 1 s
		{75, false},  // captured p99 <= 50 ms
		{2.5, false}, // throttled p50 <= 2 ms
		{1, true},    // throttled p99 ratio <= 2
		{1.5, true},  // CPU ratio (3+6)/6 <= 1.5
		{2, true},    // replay rate ratio >= 1.5
	}
	if len(got) != len(want) {
		t.Fatalf("computeTargets returned %d targets, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if !g.known || g.pass() != w.pass || g.value < w.value-1e-9 || g.value > w.value+1e-9 {
			t.Errorf("target %q = %v (known %v, pass %v), want %v (pass %v)", g.name, g.value, g.known, g.pass(), w.value, w.pass)
		}
	}
	if !strings.Contains(got[7].String(), "see the notes") {
		t.Errorf("replay target %q has no caveat for the unverified pause", got[7])
	}

	t.Run("pglogical missing", func(t *testing.T) {
		got := computeTargets(results(cas, map[scenarioKind]*scenarioResult{}))
		for _, g := range got {
			isRatio := strings.Contains(g.name, "/ pglogical")
			if isRatio && (g.known || g.pass() || !strings.Contains(g.String(), "n/a")) {
				t.Errorf("target %q without pglogical: known %v, pass %v, %q", g.name, g.known, g.pass(), g)
			}
			if !isRatio && !g.known {
				t.Errorf("target %q of casualdb alone is not known", g.name)
			}
		}
	})
	t.Run("captured at the bound", func(t *testing.T) {
		sat := *cas[scenarioSat4]
		sat.stages = stages{p99: map[stageKey]float64{{"a", "captured"}: 0.05}}
		atBound := map[scenarioKind]*scenarioResult{scenarioSat4: &sat}
		if g := computeTargets(results(atBound, pgl))[3]; !g.known || !g.pass() {
			t.Errorf("captured p99 at the 50 ms bucket: %q, want a pass", g)
		}
	})
	t.Run("no captured histogram", func(t *testing.T) {
		sat := *cas[scenarioSat4]
		sat.stages = stages{}
		noHist := map[scenarioKind]*scenarioResult{scenarioSat4: &sat}
		if g := computeTargets(results(noHist, pgl))[3]; g.known || g.pass() {
			t.Errorf("captured target without its histogram: %q", g)
		}
	})
	t.Run("failed scenario", func(t *testing.T) {
		failed := map[scenarioKind]*scenarioResult{scenarioSat4: {tps: 1, err: errNotConverged}}
		if g := computeTargets(results(failed, pgl))[2]; g.known {
			t.Errorf("catch-up target of a failed run is known: %q", g)
		}
	})
}

func TestReport(t *testing.T) {
	o := options{duration: 20 * time.Second, throttledDuration: 30 * time.Second, rate: 1000, keys: 10000,
		probeEvery: 100 * time.Millisecond, backlog: 100000}
	cas := map[scenarioKind]*scenarioResult{
		scenarioSat4: {tps: 9500, txs: 190000, hasCPU: true, cpu: cpuUse{wall: 20, machine: 50,
			sidecars: []float64{5, 3, 3}, servers: []float64{20, 5, 5}, walsenders: []float64{2, 1, 1}, apply: []float64{0, 2, 2},
			pgbench: 2, bench: 1}},
		scenarioSat8: {err: errNotConverged},
	}
	text := report(o, machine{cores: 2}, append(results(cas, map[scenarioKind]*scenarioResult{}),
		&systemResult{spec: systemSpec{name: "casualdb-5", sites: 5, scenarios: []scenarioKind{scenarioSat4}}, err: errNotConverged}))
	for _, want := range []string{
		"saturation: pgbench unthrottled, 4 clients",
		"  sidecar e",                     // five sites' rows
		"0.058",                           // sidecars, all: 11 s / 190 ktx
		"FAILED",                          // saturation-8 of casualdb
		"targets (casualdb on 3 sites",    // the targets section
		"other processes used 0.30 cores", // (50 - 41 - 3) s over 20 s
	} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q:\n%s", want, text)
		}
	}
}
