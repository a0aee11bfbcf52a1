// Command bench measures CasualDB on this machine and puts pglogical beside
// it: what replication costs the origin's throughput, replication lag at a
// fixed rate, and how long the peers take to catch up once the load stops.
//
// Each system gets three fresh PostgreSQL 15 servers (fsync off) on this
// machine. pgbench runs single-row upserts at site a: first with nothing
// replicating (the baseline), then unthrottled with replication running,
// then throttled (-rate) while a probe inserts one row every 10 ms, whose
// arrival a trigger records at the peers. README.md in this directory
// explains the figures. Run it with `make bench` or `go run ./bench`.
//
// The program exits non-zero only when the harness fails (a server does not
// start, the sites do not converge); figures that miss their targets are
// reported, not treated as failures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	duration  time.Duration // length of each pgbench run
	rate      int           // pgbench -R of the throttled run
	clients   int           // pgbench -c
	pglogical bool          // measure pglogical too
	binary    string        // casualdb binary; empty builds one
	keep      bool          // keep the temporary directory
}

// pglogicalControl exists when the pglogical extension is installed.
const pglogicalControl = "/usr/share/postgresql/15/extension/pglogical.control"

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "length of each pgbench run (whole seconds)")
	flag.IntVar(&o.rate, "rate", 1000, "target transactions per second of the throttled run (pgbench -R)")
	flag.IntVar(&o.clients, "clients", 4, "pgbench clients (-c); threads (-j) are min(2, clients)")
	flag.BoolVar(&o.pglogical, "pglogical", true, "measure pglogical too, when it is installed")
	flag.StringVar(&o.binary, "binary", "", "casualdb binary to run (default: build ./cmd/casualdb)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (databases, sidecar logs)")
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}

	// SIGINT and SIGTERM cancel ctx; every step then returns and the
	// deferred cleanup stops the sidecars and servers.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (o *options) validate() error {
	if o.duration < time.Second {
		return fmt.Errorf("-duration %s: must be at least 1s", o.duration)
	}
	o.duration = o.duration.Round(time.Second)
	if o.rate <= 0 {
		return fmt.Errorf("-rate %d: must be positive", o.rate)
	}
	if o.clients <= 0 {
		return fmt.Errorf("-clients %d: must be positive", o.clients)
	}
	return nil
}

// run measures each system in turn and prints the report. A system that
// fails does not stop the next one from being measured; its error is
// returned after the report.
func run(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "casualdb-bench-")
	if err != nil {
		return fmt.Errorf("create temp dir: %w", err)
	}
	if o.keep {
		defer fmt.Printf("kept %s (sidecar logs: casualdb/sidecar-*/sidecar.log; postgres logs: */*/postgres.log)\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	binary := o.binary
	if binary == "" {
		if binary, err = buildCasualDB(ctx, dir); err != nil {
			return err
		}
	}
	systems := []system{&casualdbSystem{binary: binary}}
	var notes []string
	switch _, err := os.Stat(pglogicalControl); {
	case !o.pglogical:
		notes = append(notes, "pglogical skipped (-pglogical=false)")
	case err != nil:
		notes = append(notes, "pglogical skipped: not installed (apt-get install postgresql-15-pglogical)")
	default:
		systems = append(systems, &pglogicalSystem{})
	}

	var results []*result
	var errs []error
	for _, sys := range systems {
		progress("measuring %s in %s", sys.name(), filepath.Join(dir, sys.name()))
		r, err := measure(ctx, o, filepath.Join(dir, sys.name()), sys)
		results = append(results, r)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", sys.name(), err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	report(os.Stdout, o, results, notes)
	return errors.Join(errs...)
}

// buildCasualDB builds ./cmd/casualdb of this module into dir.
func buildCasualDB(ctx context.Context, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("build casualdb: find module: %w", err)
	}
	mod := strings.TrimSpace(string(gomod))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("build casualdb: not inside the casualdb module (run from its directory, or pass -binary)")
	}
	root := filepath.Dir(mod)
	binary := filepath.Join(dir, "casualdb-bin")
	build := exec.CommandContext(ctx, "go", "build", "-o", binary, "./cmd/casualdb")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build casualdb: %w\n%s", err, out)
	}
	return binary, nil
}

// progress tells the operator what the bench is doing, on stderr so that
// stdout holds only the report.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
