package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"
)

// replicator is a replication system running on a cluster.
type replicator interface {
	// sidecarPIDs returns the replicating processes outside PostgreSQL, by
	// site (none for pglogical).
	sidecarPIDs() []int
	// pause stops site i from receiving and applying site a's changes;
	// resume lets it go on.
	pause(ctx context.Context, i int) error
	resume(ctx context.Context, i int) error
	// idle waits until the system has nothing left to do from earlier runs.
	idle(ctx context.Context) error
	// observe starts watching a run of secs seconds; the returned func
	// stops and reports where the lag went, if the system can tell.
	observe(ctx context.Context, name string, secs int) func() stages
	// close stops everything the system started outside the servers.
	close()
}

// systemKind tells which replicator a system runs.
type systemKind int

const (
	kindCasualDB systemKind = iota
	kindPglogical
)

// systemSpec is one system measured: a replicator on a number of sites, and
// the scenarios it runs, in order.
type systemSpec struct {
	name      string // its column in the report
	kind      systemKind
	sites     int
	scenarios []scenarioKind
}

// allScenarios are the scenarios in the order they run.
var allScenarios = []scenarioKind{scenarioBaseline, scenarioSat4, scenarioSat8, scenarioThrottled, scenarioBacklog}

// plan lists the systems the options ask for, in the order they run.
func plan(o options) []systemSpec {
	all := o.only(allScenarios)
	specs := []systemSpec{{name: "casualdb", kind: kindCasualDB, sites: 3, scenarios: all}}
	if o.pglogical {
		specs = append(specs, systemSpec{name: "pglogical", kind: kindPglogical, sites: 3, scenarios: all})
	}
	if five := o.only([]scenarioKind{scenarioSat4, scenarioThrottled}); o.five && len(five) > 0 {
		specs = append(specs, systemSpec{name: "casualdb-5", kind: kindCasualDB, sites: 5, scenarios: five})
	}
	return specs
}

// only keeps the scenarios -scenarios names (all when it is empty).
func (o options) only(ks []scenarioKind) []scenarioKind {
	if o.scenarios == "" {
		return ks
	}
	var out []scenarioKind
	for _, k := range ks {
		for _, name := range strings.Split(o.scenarios, ",") {
			if strings.TrimSpace(name) == k.String() {
				out = append(out, k)
			}
		}
	}
	return out
}

// has reports whether s runs scenario k.
func (s systemSpec) has(k scenarioKind) bool {
	for _, x := range s.scenarios {
		if x == k {
			return true
		}
	}
	return false
}

// systemResult is what one system's run measured; err is what stopped it
// early, if anything (the scenarios before it are kept).
type systemResult struct {
	spec      systemSpec
	scenarios map[scenarioKind]*scenarioResult
	idle      *idleResult // nil when not measured
	err       error
}

// runner runs one system's scenarios on freshly started servers.
type runner struct {
	o     options
	log   *slog.Logger
	spec  systemSpec
	c     *cluster
	w     *workload
	rep   replicator // nil until replication is set up
	probe *prober
	wal   *walSampler
	res   *systemResult
}

// runSystem starts spec's servers under dir, measures its scenarios, and
// stops everything it started before returning.
func runSystem(ctx context.Context, o options, spec systemSpec, dir string, log *slog.Logger) *systemResult {
	r := &runner{o: o, log: log.With("system", spec.name), spec: spec,
		res: &systemResult{spec: spec, scenarios: map[scenarioKind]*scenarioResult{}}}
	if err := r.run(ctx, filepath.Join(dir, spec.name)); err != nil {
		r.res.err = fmt.Errorf("%s: %w", spec.name, err)
		r.log.Error("system stopped early", "err", err)
	}
	return r.res
}

func (r *runner) run(ctx context.Context, dir string) error {
	var settings map[string]string
	if r.spec.kind == kindPglogical {
		if err := pglogicalInstalled(); err != nil {
			return err
		}
		settings = pglogicalSettings
	}
	if r.o.statements > 0 {
		settings = withStatements(settings)
	}
	r.log.Info("starting servers", "sites", r.spec.sites)
	c, err := startCluster(ctx, dir, r.spec.sites, settings)
	if err != nil {
		return err
	}
	r.c = c
	defer c.stop()
	if r.w, err = newWorkload(dir, r.o.keys); err != nil {
		return err
	}
	if r.spec.has(scenarioBaseline) {
		if err := r.scenario(ctx, scenarioBaseline); err != nil {
			return err
		}
		// Neither system copies the rows written before it runs here
		// (casualdb has no initial copy; pglogical subscribes with
		// synchronize_data := false): every site starts empty.
		if err := c.truncate(ctx, 0); err != nil {
			return fmt.Errorf("empty site a after the baseline: %w", err)
		}
	}
	r.log.Info("setting up replication")
	switch r.spec.kind {
	case kindCasualDB:
		s, err := startCasualDB(ctx, r.o, c, r.log)
		if err != nil {
			return err
		}
		r.rep = s
	case kindPglogical:
		s, err := startPglogical(ctx, c)
		if err != nil {
			return err
		}
		r.rep = s
	}
	defer r.rep.close()
	if err := c.converge(ctx); err != nil {
		return fmt.Errorf("converge before the first run: %w", err)
	}
	if r.o.idle > 0 {
		r.log.Info("measuring the idle system", "for", r.o.idle)
		if r.res.idle, err = r.idle(ctx); err != nil {
			return fmt.Errorf("idle: %w", err)
		}
	}
	if r.probe, err = newProber(ctx, benchDSN(c.servers[0]), r.o.probeEvery); err != nil {
		return err
	}
	defer r.probe.close()
	if r.wal, err = newWALSampler(ctx, benchDSN(c.servers[0]), r.o.walEvery); err != nil {
		return err
	}
	defer r.wal.close()
	for _, k := range r.spec.scenarios {
		if k == scenarioBaseline {
			continue
		}
		if err := r.scenario(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// scenario runs k and records its result, or its error with what was
// measured before the error.
func (r *runner) scenario(ctx context.Context, k scenarioKind) error {
	r.log.Info("scenario", "name", k.String())
	res := &scenarioResult{kind: k}
	r.res.scenarios[k] = res
	var err error
	switch k {
	case scenarioBaseline:
		err = r.baseline(ctx, res)
	case scenarioSat4:
		err = r.saturation(ctx, res, 4)
	case scenarioSat8:
		err = r.saturation(ctx, res, 8)
	case scenarioThrottled:
		err = r.throttled(ctx, res)
	case scenarioBacklog:
		err = r.backlog(ctx, res)
	}
	if err != nil {
		res.err = fmt.Errorf("%s: %w", k, err)
		return res.err
	}
	r.log.Info("scenario done", "name", k.String(), "tps", int(res.tps), "lag_p99", res.lag.p99.Round(10*time.Microsecond),
		"catch_up", res.catchUp.Round(time.Millisecond))
	return nil
}
