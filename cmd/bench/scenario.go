package main

import (
	"context"
	"fmt"
	"time"
)

// scenarioKind is one of the runs every system goes through, in this order.
type scenarioKind int

const (
	// scenarioBaseline: pgbench at site a before replication is set up.
	scenarioBaseline scenarioKind = iota
	// scenarioSat4 and scenarioSat8: pgbench unthrottled, 4 and 8 clients.
	scenarioSat4
	scenarioSat8
	// scenarioThrottled: pgbench -R, once every sidecar is idle.
	scenarioThrottled
	// scenarioBacklog: site b paused while site a writes, then resumed.
	scenarioBacklog
)

func (k scenarioKind) String() string {
	switch k {
	case scenarioBaseline:
		return "baseline"
	case scenarioSat4:
		return "saturation-4"
	case scenarioSat8:
		return "saturation-8"
	case scenarioThrottled:
		return "throttled"
	case scenarioBacklog:
		return "backlog"
	}
	return fmt.Sprintf("scenario(%d)", int(k))
}

// backlogSite is the site the backlog scenario pauses: b.
const backlogSite = 1

// throttledClients are pgbench's clients in the throttled run and in the
// backlog's write.
const throttledClients = 4

// event marks a moment of a scenario in the picture.
type event struct {
	at    time.Duration // since the scenario's start
	label string
}

// scenarioResult is what one scenario measured at one system.
type scenarioResult struct {
	kind    scenarioKind
	start   time.Time
	tps     float64       // pgbench's, at site a
	txs     int64         // transactions pgbench committed
	load    time.Duration // how long pgbench ran
	pgbench float64       // pgbench's own CPU seconds
	lag     lagStats
	// decoding is how far site a's walsenders were behind during the load
	// (saturation and throttled runs).
	decoding walStats
	probes   []probeLag
	catchUp  time.Duration // from pgbench's end until every peer holds what a holds
	cpu      cpuUse
	hasCPU   bool
	events   []event
	stages   stages // casualdb's delay histograms (saturation and throttled runs)
	// statements are each site's most expensive statements (-statements),
	// throttled run only.
	statements []string
	// backlog scenario
	replay time.Duration // from resuming b until b holds what a holds
	// replayBusy is the machine's busy CPU time during the replay (seconds,
	// all cores): whether the replay was bound by the CPU.
	replayBusy float64
	notes      []string // what the reader must know (an unverified pause)
	err        error
}

// measurement is a scenario in progress: its CPU window and its probes.
type measurement struct {
	res     *scenarioResult
	cpu     *cpuWindow
	probing bool
}

// begin starts measuring res: the CPU window, and the prober with probe.
func (r *runner) begin(ctx context.Context, res *scenarioResult, probe bool) (*measurement, error) {
	var sidecars []int
	if r.rep != nil {
		sidecars = r.rep.sidecarPIDs()
	}
	cw, err := startCPU(ctx, r.c, sidecars)
	if err != nil {
		return nil, err
	}
	res.start = time.Now()
	if probe {
		r.probe.start()
	}
	return &measurement{res: res, cpu: cw, probing: probe}, nil
}

func (m *measurement) event(label string) {
	m.res.events = append(m.res.events, event{at: time.Since(m.res.start), label: label})
}

// finish ends the CPU window and reads the probes' lags; every peer must
// hold what a holds by now.
func (r *runner) finish(ctx context.Context, m *measurement, first, last int64) error {
	cpu, err := m.cpu.stop(ctx, r.c)
	if err != nil {
		return err
	}
	cpu.pgbench = m.res.pgbench
	m.res.cpu, m.res.hasCPU = cpu, true
	if !m.probing {
		return nil
	}
	probes, dups, err := r.c.collectLags(ctx, first, last)
	if err != nil {
		return err
	}
	m.res.probes, m.res.lag = probes, summarise(probes, dups)
	if m.res.lag.duplicates > 0 {
		m.res.notes = append(m.res.notes, fmt.Sprintf("%d probes arrived more than once at a peer", m.res.lag.duplicates))
	}
	if m.res.lag.missing > 0 {
		m.res.notes = append(m.res.notes, fmt.Sprintf("%d (probe, peer) pairs never arrived", m.res.lag.missing))
	}
	return nil
}

// baseline measures site a's throughput before replication is set up.
func (r *runner) baseline(ctx context.Context, res *scenarioResult) error {
	m, err := r.begin(ctx, res, false)
	if err != nil {
		return err
	}
	pb, err := r.w.run(ctx, r.c.servers[0], pgbenchRun{clients: 4, duration: r.o.duration})
	if err != nil {
		return err
	}
	res.tps, res.txs, res.pgbench = pb.tps, pb.txs, pb.cpu
	return r.finish(ctx, m, 0, -1)
}

// load runs pgbench at site a under measurement, then stops the probes and
// waits until every peer has caught up.
func (r *runner) load(ctx context.Context, m *measurement, rn pgbenchRun) (first, last int64, err error) {
	start := time.Now()
	r.wal.start(ctx)
	pb, err := r.w.run(ctx, r.c.servers[0], rn)
	end := time.Now()
	m.res.load = end.Sub(start)
	m.event("load ends")
	first, last = r.probe.stop()
	m.res.decoding = r.wal.stop()
	if d := m.res.decoding; d.failed > 0 {
		m.res.notes = append(m.res.notes, fmt.Sprintf("%d samples of site a's walsenders failed (the last: %v)", d.failed, d.lastErr))
	}
	if err != nil {
		return 0, 0, err
	}
	m.res.tps, m.res.txs, m.res.pgbench = pb.tps, pb.txs, pb.cpu
	if err := r.c.converge(ctx); err != nil {
		return 0, 0, fmt.Errorf("catch up: %w", err)
	}
	m.res.catchUp = time.Since(end)
	m.event("caught up")
	return first, last, nil
}

// saturation runs pgbench unthrottled with clients.
func (r *runner) saturation(ctx context.Context, res *scenarioResult, clients int) error {
	m, err := r.begin(ctx, res, true)
	if err != nil {
		return err
	}
	secs := max(1, int(r.o.duration.Seconds())-2)
	observed := r.rep.observe(ctx, fmt.Sprintf("%s-saturation-%d", r.spec.name, clients), secs)
	first, last, err := r.load(ctx, m, pgbenchRun{clients: clients, duration: r.o.duration})
	res.stages = observed()
	if err != nil {
		return err
	}
	return r.finish(ctx, m, first, last)
}

// throttled runs pgbench at a fixed rate once the system is idle and every
// server has vacuumed and checkpointed.
func (r *runner) throttled(ctx context.Context, res *scenarioResult) error {
	if err := r.rep.idle(ctx); err != nil {
		return err
	}
	if err := r.c.settle(ctx); err != nil {
		return err
	}
	if r.o.statements > 0 {
		if err := r.c.resetStatements(ctx); err != nil {
			return err
		}
	}
	m, err := r.begin(ctx, res, true)
	if err != nil {
		return err
	}
	secs := max(1, int(r.o.throttledDuration.Seconds())-2)
	observed := r.rep.observe(ctx, r.spec.name, secs)
	first, last, err := r.load(ctx, m, pgbenchRun{clients: throttledClients, duration: r.o.throttledDuration, rate: r.o.rate})
	res.stages = observed()
	if err != nil {
		return err
	}
	if r.o.statements > 0 {
		if res.statements, err = r.c.topStatements(ctx, r.o.statements); err != nil {
			return err
		}
	}
	return r.finish(ctx, m, first, last)
}

// backlog pauses site b, writes -backlog transactions at site a, waits
// until the other peers hold them, and times b's replay after resuming it.
// The probes go on throughout: b's lag grows while it is paused.
func (r *runner) backlog(ctx context.Context, res *scenarioResult) error {
	m, err := r.begin(ctx, res, true)
	if err != nil {
		return err
	}
	b := backlogSite
	if err := r.rep.pause(ctx, b); err != nil {
		return err
	}
	// Let what b was applying when paused finish (or roll back) before
	// taking the digest the pause must hold.
	if err := sleep(ctx, 500*time.Millisecond); err != nil {
		return err
	}
	held, err := r.c.digest(ctx, b)
	if err != nil {
		return err
	}
	per := max(1, r.o.backlog/throttledClients)
	pb, err := r.w.run(ctx, r.c.servers[0], pgbenchRun{clients: throttledClients, txPerClient: per})
	if err != nil {
		return err
	}
	m.event("write ends")
	res.tps, res.txs, res.pgbench = pb.tps, pb.txs, pb.cpu
	marker, err := r.c.mark(ctx)
	if err != nil {
		return err
	}
	want, err := r.c.digest(ctx, 0)
	if err != nil {
		return err
	}
	var others []int
	for _, i := range r.c.peers() {
		if i != b {
			others = append(others, i)
		}
	}
	if err := r.c.waitDigest(ctx, want, marker, others, true); err != nil {
		return fmt.Errorf("catch up the sites not paused: %w", err)
	}
	m.event("others caught up")
	still, err := r.c.digest(ctx, b)
	if err != nil {
		return err
	}
	switch {
	case !still.same(held):
		res.notes = append(res.notes, fmt.Sprintf("pause NOT verified: site b's digest changed while paused (%s, then %s)", held, still))
	case still.sameData(want):
		res.notes = append(res.notes, "pause NOT verified: site b held every transaction before it was resumed")
	}
	if err := r.rep.resume(ctx, b); err != nil {
		return err
	}
	resumed, busy := time.Now(), machineBusy()
	m.event("b resumed")
	// With -profile, where the replay spends its CPU (its first seconds).
	replayed := r.rep.observe(ctx, r.spec.name+"-replay", 5)
	defer replayed()
	if paused := m.res.events[len(m.res.events)-1].at; r.spec.kind == kindCasualDB && paused > time.Minute {
		// b's own walsender gives up on the stopped sidecar's replication
		// connection after wal_sender_timeout (60 s).
		res.notes = append(res.notes, fmt.Sprintf("site b's sidecar was stopped for %s, longer than wal_sender_timeout (60s)", paused.Round(time.Second)))
	}
	if err := r.c.waitDigest(ctx, want, marker, []int{b}, true); err != nil {
		return fmt.Errorf("replay at site b: %w", err)
	}
	res.replay = time.Since(resumed)
	res.replayBusy = machineBusy() - busy
	m.event("b caught up")
	first, last := r.probe.stop()
	if err := r.c.converge(ctx); err != nil {
		return fmt.Errorf("converge after the replay: %w", err)
	}
	return r.finish(ctx, m, first, last)
}
