package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// table is one scenario's figures: a row per measure, a column per system.
type table struct {
	title string
	cols  []string
	rows  [][]string // label, then a cell per column
}

func (t *table) row(label string, cells ...string) {
	t.rows = append(t.rows, append([]string{label}, cells...))
}

func (t *table) write(b *strings.Builder) {
	width := 0
	for _, r := range t.rows {
		width = max(width, len(r[0]))
	}
	colw := 12
	for _, c := range t.cols {
		colw = max(colw, len(c)+2)
	}
	fmt.Fprintf(b, "\n%s\n", t.title)
	fmt.Fprintf(b, "%-*s", width, "")
	for _, c := range t.cols {
		fmt.Fprintf(b, "%*s", colw, c)
	}
	b.WriteString("\n")
	for _, r := range t.rows {
		line := fmt.Sprintf("%-*s", width, r[0])
		for _, c := range r[1:] {
			line += fmt.Sprintf("%*s", colw, c)
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
}

const none = "-"

// noisyCores is how many cores other processes may use during a scenario
// before the report says the machine was not quiet.
const noisyCores = 0.25

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64)
}

// per1000 formats CPU seconds per 1,000 transactions.
func per1000(secs float64, txs int64) string {
	if txs <= 0 {
		return none
	}
	return strconv.FormatFloat(secs*1000/float64(txs), 'f', 3, 64)
}

// scenarioTitle describes k as the report heads its table.
func scenarioTitle(o options, k scenarioKind) string {
	switch k {
	case scenarioBaseline:
		return fmt.Sprintf("baseline: pgbench at site a before replication is set up, 4 clients, %s (context only)", o.duration)
	case scenarioSat4:
		return fmt.Sprintf("saturation: pgbench unthrottled, 4 clients, %s", o.duration)
	case scenarioSat8:
		return fmt.Sprintf("saturation: pgbench unthrottled, 8 clients, %s", o.duration)
	case scenarioThrottled:
		return fmt.Sprintf("throttled: pgbench -R %d, %d clients, %s, after the sites are idle, vacuumed and checkpointed", o.rate, throttledClients, o.throttledDuration)
	case scenarioBacklog:
		return fmt.Sprintf("backlog: site b paused while site a writes %d transactions (%d clients), then resumed", o.backlog/throttledClients*throttledClients, throttledClients)
	}
	return k.String()
}

// report renders every system's results as text.
func report(o options, m machine, rs []*systemResult) string {
	var b strings.Builder
	links := "casualdb's NATS links in plain text on loopback"
	if o.tls {
		links = "casualdb's NATS links mutual TLS"
	}
	fmt.Fprintf(&b, "CasualDB bench, %s, %s, fsync=off, %s\n", m.date.Format("2006-01-02 15:04"), m, links)
	fmt.Fprintf(&b, "workload at site a: pgbench -n -j 2 -f kv.sql@%d -f acct.sql@%d over %d keys (bench_kv, bench_acct); a probe into bench_probe every %s\n",
		kvWeight, acctWeight, o.keys, o.probeEvery)
	b.WriteString("systems, one after another on fresh servers:")
	for _, r := range rs {
		fmt.Fprintf(&b, " %s (%d sites)", r.spec.name, r.spec.sites)
	}
	b.WriteString("\nlag: arrived - sent of every probe at every peer; catch-up: from pgbench's end until every peer holds what site a holds\n")
	idleTable(rs, &b)
	for _, k := range allScenarios {
		scenarioTable(o, k, rs, &b)
	}
	b.WriteString("\ntargets (casualdb on 3 sites against pglogical, this run):\n")
	targets := computeTargets(rs)
	width := 0
	for _, t := range targets {
		width = max(width, len(t.name))
	}
	for _, t := range targets {
		b.WriteString("  " + t.format(width) + "\n")
	}
	var failed []string
	for _, r := range rs {
		if r.err != nil {
			failed = append(failed, "  "+r.err.Error())
		}
	}
	if len(failed) > 0 {
		b.WriteString("\nFAILED (the system's later scenarios did not run):\n" + strings.Join(failed, "\n") + "\n")
	}
	b.WriteString(`
CPU: utime+stime from /proc over each scenario, from its start until every peer caught up, divided by the
origin's transactions. "whole server" counts the postmaster and every backend, pgbench's included;
"walsenders" and "apply" are the replication processes inside PostgreSQL, classified by pg_stat_activity
(apply: pglogical's workers, or every client backend that is not pgbench's or the bench's, i.e. the
sidecar's); one that exits during a scenario is missed. "other processes" is what the machine did besides
this benchmark: on a shared machine, the noise in every figure here. Every process shares the same cores,
so a system that keeps the machine busier slows its own origin.
`)
	if o.walEvery > 0 {
		fmt.Fprintf(&b, `Walsenders behind: every %[1]s during the load, on a connection of its own, the age of the oldest WAL
that a walsender at site a had flushed but not yet decoded (pg_stat_replication.sent_lsn against earlier
samples of pg_current_wal_flush_lsn(), read just before; an upper bound within %[1]s; 0 when it had decoded
everything), over every walsender there (casualdb: the sidecar's one; pglogical: one per subscriber). It is
the part of the lag that PostgreSQL's decoding makes before either replicator's own code sees a transaction.
The same samples tell what each walsender was doing (pg_stat_activity's wait event; "running" when none: on
a CPU or waiting for one): Client:WalSenderWaitForWAL is a walsender that has decoded everything flushed and
waits for more (and, with output pending, for its client to read it), Client:WalSenderWriteData one waiting
for its client.
`, o.walEvery)
	}
	return b.String()
}

// scenarioTable writes the table of scenario k, with a column per system
// that runs it.
func scenarioTable(o options, k scenarioKind, rs []*systemResult, b *strings.Builder) {
	var cols []*systemResult
	for _, r := range rs {
		if r.spec.has(k) {
			cols = append(cols, r)
		}
	}
	if len(cols) == 0 {
		return
	}
	t := &table{title: scenarioTitle(o, k)}
	maxSites := 0
	for _, r := range cols {
		t.cols = append(t.cols, r.spec.name)
		maxSites = max(maxSites, r.spec.sites)
	}
	cell := func(f func(s *scenarioResult) string) []string {
		out := make([]string, len(cols))
		for i, r := range cols {
			s := r.scenarios[k]
			switch {
			case s == nil:
				out[i] = "not run"
			case s.err != nil:
				out[i] = "FAILED"
			default:
				out[i] = f(s)
			}
		}
		return out
	}
	row := func(label string, f func(s *scenarioResult) string) { t.row(label, cell(f)...) }
	row("origin tps at site a", func(s *scenarioResult) string { return fmt.Sprintf("%.0f", s.tps) })
	row("transactions", func(s *scenarioResult) string { return strconv.FormatInt(s.txs, 10) })
	if k == scenarioBacklog {
		row("replay time at b (ms)", func(s *scenarioResult) string { return ms(s.replay) })
		row("replay rate at b (tps)", func(s *scenarioResult) string {
			if s.replay <= 0 {
				return none
			}
			return fmt.Sprintf("%.0f", float64(s.txs)/s.replay.Seconds())
		})
		row("machine cores busy during the replay", func(s *scenarioResult) string {
			if s.replay <= 0 {
				return none
			}
			return fmt.Sprintf("%.2f", s.replayBusy/s.replay.Seconds())
		})
	}
	if k != scenarioBaseline {
		row("lag p50 (ms)", func(s *scenarioResult) string { return ms(s.lag.p50) })
		row("lag p99 (ms)", func(s *scenarioResult) string { return ms(s.lag.p99) })
		row("lag max (ms)", func(s *scenarioResult) string { return ms(s.lag.pmax) })
		row("probes counted", func(s *scenarioResult) string { return strconv.Itoa(s.lag.probes) })
	}
	if k == scenarioSat4 || k == scenarioSat8 || k == scenarioThrottled {
		wal := func(f func(w walStats) time.Duration) func(s *scenarioResult) string {
			return func(s *scenarioResult) string {
				if s.decoding.samples == 0 {
					return none
				}
				return ms(f(s.decoding))
			}
		}
		row("site a's walsenders behind p50 (ms)", wal(func(w walStats) time.Duration { return w.p50 }))
		row("site a's walsenders behind p99 (ms)", wal(func(w walStats) time.Duration { return w.p99 }))
		row("site a's walsenders behind max (ms)", wal(func(w walStats) time.Duration { return w.pmax }))
	}
	if k != scenarioBaseline && k != scenarioBacklog {
		row("catch-up (ms)", func(s *scenarioResult) string { return ms(s.catchUp) })
		row("replicated tps: transactions / (run + catch-up)", func(s *scenarioResult) string {
			if d := s.load + s.catchUp; d > 0 {
				return fmt.Sprintf("%.0f", float64(s.txs)/d.Seconds())
			}
			return none
		})
	}
	cpuRows(t, k, cols, maxSites, row)
	t.write(b)
	for i, r := range cols {
		s := r.scenarios[k]
		if s == nil {
			continue
		}
		if s.err != nil {
			fmt.Fprintf(b, "  %s: %v\n", t.cols[i], s.err)
		}
		for _, n := range s.notes {
			fmt.Fprintf(b, "  %s: %s\n", t.cols[i], n)
		}
		if s.hasCPU && s.cpu.wall > 0 && s.cpu.others()/s.cpu.wall > noisyCores {
			fmt.Fprintf(b, "  %s: other processes used %.2f cores on average meanwhile: the machine was not quiet\n",
				t.cols[i], s.cpu.others()/s.cpu.wall)
		}
	}
	for i, r := range cols {
		if s := r.scenarios[k]; s != nil && len(s.statements) > 0 {
			fmt.Fprintf(b, "\n  %s, most expensive statements per site (pg_stat_statements):\n", t.cols[i])
			for _, l := range s.statements {
				b.WriteString("    " + l + "\n")
			}
		}
	}
	for i, r := range cols {
		if s := r.scenarios[k]; s != nil && len(s.decoding.events) > 0 {
			fmt.Fprintf(b, "  %s: site a's walsenders during the load: %s\n", t.cols[i], eventShares(s.decoding.events))
			if s.decoding.unknown > 0 {
				fmt.Fprintf(b, "  %s: %d walsender samples left out of \"behind\": behind every earlier sample\n", t.cols[i], s.decoding.unknown)
			}
		}
	}
	for i, r := range cols {
		if s := r.scenarios[k]; s != nil && len(s.stages.lines) > 0 {
			fmt.Fprintf(b, "\n  %s, commit at a to each stage (casualdb_delay_seconds, bucket bounds):\n", t.cols[i])
			for _, l := range s.stages.lines {
				b.WriteString("    " + l + "\n")
			}
		}
	}
}

// cpuRows adds the CPU rows of a scenario's table.
func cpuRows(t *table, k scenarioKind, cols []*systemResult, sites int, row func(string, func(*scenarioResult) string)) {
	cpu := func(f func(u cpuUse) (float64, bool)) func(s *scenarioResult) string {
		return func(s *scenarioResult) string {
			if !s.hasCPU {
				return none
			}
			v, ok := f(s.cpu)
			if !ok {
				return none
			}
			return per1000(v, s.txs)
		}
	}
	at := func(xs []float64, i int) (float64, bool) {
		if i >= len(xs) {
			return 0, false
		}
		return xs[i], true
	}
	row("CPU window (s)", func(s *scenarioResult) string {
		if !s.hasCPU {
			return none
		}
		return fmt.Sprintf("%.1f", s.cpu.wall)
	})
	t.row("CPU seconds per 1,000 origin transactions:")
	hasSidecars := false
	for _, r := range cols {
		hasSidecars = hasSidecars || r.spec.kind == kindCasualDB && k != scenarioBaseline
	}
	if hasSidecars {
		for i := range sites {
			row("  sidecar "+siteName(i), cpu(func(u cpuUse) (float64, bool) { return at(u.sidecars, i) }))
		}
		row("  sidecars, all", cpu(func(u cpuUse) (float64, bool) { return sum(u.sidecars), len(u.sidecars) > 0 }))
	}
	if k != scenarioBaseline {
		row("  in postgres: walsenders", cpu(func(u cpuUse) (float64, bool) { return sum(u.walsenders), true }))
		row("  in postgres: apply (workers, sidecar backends)", cpu(func(u cpuUse) (float64, bool) { return sum(u.apply), true }))
		row("  replication in postgres, all", cpu(func(u cpuUse) (float64, bool) { return sum(u.walsenders) + sum(u.apply), true }))
		row("  replicator: sidecars + replication in postgres", cpu(func(u cpuUse) (float64, bool) { return u.replicators(), true }))
	}
	for i := range sites {
		row("  postgres "+siteName(i)+" (whole server)", cpu(func(u cpuUse) (float64, bool) { return at(u.servers, i) }))
	}
	row("  postgres, all servers", cpu(func(u cpuUse) (float64, bool) { return sum(u.servers), true }))
	row("  sidecars + postgres servers", cpu(func(u cpuUse) (float64, bool) { return u.system(), true }))
	row("  pgbench and the bench (clients)", cpu(func(u cpuUse) (float64, bool) { return u.pgbench + u.bench, true }))
	row("  other processes (not this benchmark)", cpu(func(u cpuUse) (float64, bool) { return u.others(), true }))
	row("  machine (all processes)", cpu(func(u cpuUse) (float64, bool) { return u.machine, true }))
	if k == scenarioThrottled {
		cores := func(f func(u cpuUse) float64) func(s *scenarioResult) string {
			return func(s *scenarioResult) string {
				if !s.hasCPU || s.cpu.wall <= 0 {
					return none
				}
				return fmt.Sprintf("%.2f", f(s.cpu)/s.cpu.wall)
			}
		}
		row("cores used: sidecars + postgres servers", cores(cpuUse.system))
		row("cores used: machine", cores(func(u cpuUse) float64 { return u.machine }))
	}
}

// idleTable reports what each system costs with nothing written.
func idleTable(rs []*systemResult, b *strings.Builder) {
	var cols []*systemResult
	for _, r := range rs {
		if r.idle != nil {
			cols = append(cols, r)
		}
	}
	if len(cols) == 0 {
		return
	}
	t := &table{title: fmt.Sprintf("idle: nothing written for %s once set up (after %s to settle)", cols[0].idle.wall.Round(time.Second), idleSettle)}
	for _, r := range cols {
		t.cols = append(t.cols, r.spec.name)
	}
	defer t.write(b)
	row := func(label string, f func(i *idleResult) string) {
		var cells []string
		for _, r := range cols {
			cells = append(cells, f(r.idle))
		}
		t.row(label, cells...)
	}
	cores := func(secs float64, i *idleResult) string { return fmt.Sprintf("%.2f%%", 100*secs/i.wall.Seconds()) }
	maxSites := 0
	for _, r := range cols {
		maxSites = max(maxSites, len(r.idle.walPerSite))
	}
	for s := 0; s < maxSites; s++ {
		row(fmt.Sprintf("sidecar %s (%% of a core)", siteName(s)), func(i *idleResult) string {
			if s >= len(i.cpu.sidecars) {
				return none
			}
			return cores(i.cpu.sidecars[s], i)
		})
	}
	row("replication in postgres, all (% of a core)", func(i *idleResult) string {
		return cores(sum(i.cpu.walsenders)+sum(i.cpu.apply), i)
	})
	row("postgres servers, all (% of a core)", func(i *idleResult) string { return cores(sum(i.cpu.servers), i) })
	for s := 0; s < maxSites; s++ {
		row(fmt.Sprintf("WAL written at site %s (bytes/s)", siteName(s)), func(i *idleResult) string {
			if s >= len(i.walPerSite) {
				return none
			}
			return fmt.Sprintf("%.0f", i.walPerSite[s])
		})
	}
}
