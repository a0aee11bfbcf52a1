// Command bench measures CasualDB beside pglogical on this machine, in one
// run and on the same workload, and writes what it saw to a report
// (results.txt) and a picture of the replication lag (lag.svg).
//
// Each system runs on freshly started PostgreSQL servers, one system after
// another: casualdb on three sites, pglogical as a full mesh of three, and
// casualdb on five sites (to show how the cost grows with the peers). Each
// goes through the same scenarios: the origin's throughput before
// replication (baseline), pgbench unthrottled with 4 and with 8 clients
// (saturation), pgbench at a fixed rate (throttled), and the replay of a
// backlog at a peer that was paused while the origin wrote. Throughout, a
// probe row inserted at site a every 100 ms tells the lag at every peer, and
// /proc tells the CPU each sidecar, each PostgreSQL server and the
// replication processes inside it used. The report ends with the ratios the
// project tracks against pglogical, each with its target.
//
// Run it with `make bench`; `go run ./cmd/bench -help` lists the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type options struct {
	duration          time.Duration // each saturation run and the baseline
	throttledDuration time.Duration
	rate              int // the throttled run's transactions per second
	keys              int
	probeEvery        time.Duration
	walEvery          time.Duration
	backlog           int // transactions written while b is paused
	pglogical         bool
	five              bool
	binary            string
	keep              bool
	profile           string
	statements        int           // top statements per site in the throttled run (pg_stat_statements); 0: none
	scenarios         string        // comma-separated scenario names to run; empty: all
	idle              time.Duration // how long the idle system is measured; 0: not
	logLevel          string
	out               string
	tls               bool // the sidecars' NATS links speak mutual TLS, as a user runs them
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "length of the baseline and of each saturation run")
	flag.DurationVar(&o.throttledDuration, "throttled-duration", 30*time.Second, "length of the throttled run")
	flag.IntVar(&o.rate, "rate", 1000, "transactions per second of the throttled run (pgbench -R)")
	flag.IntVar(&o.keys, "keys", 10000, "keys of each table the workload updates")
	flag.DurationVar(&o.probeEvery, "probe-every", 100*time.Millisecond, "interval between lag probes")
	flag.DurationVar(&o.walEvery, "wal-every", 20*time.Millisecond, "interval between samples of site a's walsenders during each load (0: not sampled)")
	flag.IntVar(&o.backlog, "backlog", 100000, "transactions written at site a while site b is paused")
	flag.BoolVar(&o.pglogical, "pglogical", true, "measure pglogical too")
	flag.BoolVar(&o.five, "five", true, "measure casualdb on five sites too (saturation with 4 clients and the throttled run)")
	flag.StringVar(&o.binary, "binary", "", "casualdb binary (default: build ./cmd/casualdb)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (the sidecars' logs)")
	flag.StringVar(&o.logLevel, "log-level", "warn", "sidecars' log level (their logs are in the temporary directory: use -keep)")
	flag.StringVar(&o.profile, "profile", "", "write CPU profiles of the sidecars during the throttled run into this directory")
	flag.StringVar(&o.out, "out", "docs/perf", "directory for results.txt and lag.svg")
	flag.DurationVar(&o.idle, "idle", 15*time.Second, "how long to measure each system idle, once set up (0: not)")
	flag.StringVar(&o.scenarios, "scenarios", "", "run only these scenarios (comma-separated: baseline, saturation-4, saturation-8, throttled, backlog); for quick comparisons, not for the published figures")
	flag.BoolVar(&o.tls, "tls", false, "casualdb's NATS links speak mutual TLS with per-site certificates (casualdb certs), as a deployment off loopback must; default plain text on loopback")
	flag.IntVar(&o.statements, "statements", 0, "report each site's N most expensive statements of the throttled run (pg_stat_statements)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, o, log); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

func (o options) validate() error {
	switch {
	case o.duration < time.Second || o.throttledDuration < time.Second:
		return errors.New("-duration and -throttled-duration must be at least 1s")
	case o.rate <= 0 || o.keys <= 0 || o.backlog < throttledClients:
		return fmt.Errorf("-rate and -keys must be positive and -backlog at least %d", throttledClients)
	case o.walEvery < 0:
		return errors.New("-wal-every must not be negative")
	case o.probeEvery <= 0:
		return errors.New("-probe-every must be positive")
	}
	if o.scenarios != "" {
		for _, name := range strings.Split(o.scenarios, ",") {
			known := false
			for k := scenarioBaseline; k <= scenarioBacklog; k++ {
				known = known || strings.TrimSpace(name) == k.String()
			}
			if !known {
				return fmt.Errorf("-scenarios: unknown scenario %q (baseline, saturation-4, saturation-8, throttled, backlog)", name)
			}
		}
	}
	return nil
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if err := o.validate(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "casualdb-bench-")
	if err != nil {
		return fmt.Errorf("create temporary directory: %w", err)
	}
	if o.keep {
		log.Info("keeping the temporary directory", "dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	if o.binary == "" {
		o.binary = filepath.Join(dir, "casualdb-bin")
		log.Info("building casualdb")
		build := exec.CommandContext(ctx, "go", "build", "-o", o.binary, "./cmd/casualdb")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build casualdb: %w", err)
		}
	}
	m := thisMachine()
	var results []*systemResult
	for _, spec := range plan(o) {
		results = append(results, runSystem(ctx, o, spec, dir, log))
		if ctx.Err() != nil {
			break
		}
	}
	text := report(o, m, results)
	if o.keep {
		text += "\nkept the temporary directory " + dir + "\n"
	}
	fmt.Print(text)
	if err := writeOutputs(o, m, results, text); err != nil {
		return err
	}
	var errs []error
	for _, r := range results {
		if r.err != nil {
			errs = append(errs, r.err)
		}
	}
	return errors.Join(errs...)
}

// writeOutputs writes the report and the picture into -out.
func writeOutputs(o options, m machine, results []*systemResult, text string) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", o.out, err)
	}
	if err := os.WriteFile(filepath.Join(o.out, "results.txt"), []byte(text), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	f, err := os.Create(filepath.Join(o.out, "lag.svg"))
	if err != nil {
		return fmt.Errorf("create lag.svg: %w", err)
	}
	title := fmt.Sprintf("Probe lag at the peers, %s, %s", m.date.Format("2006-01-02 15:04"), m)
	err = writeSVG(f, title, lagPanels(o, results))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write lag.svg: %w", err)
	}
	return nil
}

// machine describes where the run took place.
type machine struct {
	date  time.Time
	cores int
	model string
}

func (m machine) String() string {
	if m.model == "" {
		return fmt.Sprintf("%d cores", m.cores)
	}
	return fmt.Sprintf("%d cores (%s)", m.cores, m.model)
}

func thisMachine() machine {
	m := machine{date: time.Now(), cores: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.model = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}
