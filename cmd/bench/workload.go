package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
)

// The workload, the same for every system: three upserts into bench_kv for
// one into bench_acct, each over -keys keys, from pgbench at site a.
const (
	kvScript = `\set k random(1, :keys)
INSERT INTO bench_kv (k, v) VALUES (:k, 1) ON CONFLICT (k) DO UPDATE SET v = bench_kv.v + 1, t = clock_timestamp();
`
	acctScript = `\set id random(1, :keys)
INSERT INTO bench_acct (id, balance, note) VALUES (:id, 1, 'n') ON CONFLICT (id) DO UPDATE SET balance = bench_acct.balance + 1, t = clock_timestamp();
`
	kvWeight   = 3
	acctWeight = 1
	// pgbenchApp is pgbench's application_name (PGAPPNAME), which the CPU
	// accounting counts as the workload's, not the replicator's.
	pgbenchApp = "pgbench"
)

// workload runs pgbench with the bench's scripts.
type workload struct {
	kvPath, acctPath string
	keys             int
}

// newWorkload writes the scripts into dir.
func newWorkload(dir string, keys int) (*workload, error) {
	w := &workload{kvPath: filepath.Join(dir, "kv.sql"), acctPath: filepath.Join(dir, "acct.sql"), keys: keys}
	if err := os.WriteFile(w.kvPath, []byte(kvScript), 0o644); err != nil {
		return nil, fmt.Errorf("write pgbench script: %w", err)
	}
	if err := os.WriteFile(w.acctPath, []byte(acctScript), 0o644); err != nil {
		return nil, fmt.Errorf("write pgbench script: %w", err)
	}
	return w, nil
}

// pgbenchRun is one pgbench invocation: for duration, or txPerClient transactions
// per client when duration is zero; rate > 0 throttles it (-R).
type pgbenchRun struct {
	clients     int
	duration    time.Duration
	txPerClient int
	rate        int
}

// pgbenchResult is what pgbench reported.
type pgbenchResult struct {
	tps float64 // without the initial connection time
	txs int64   // transactions processed
	cpu float64 // seconds of CPU pgbench itself used
}

// args returns pgbench's arguments for r against s.
func (w *workload) args(r pgbenchRun, s *pgtest.Server) []string {
	args := []string{"-n",
		"-f", fmt.Sprintf("%s@%d", w.kvPath, kvWeight),
		"-f", fmt.Sprintf("%s@%d", w.acctPath, acctWeight),
		"-D", "keys=" + strconv.Itoa(w.keys),
		"-c", strconv.Itoa(r.clients), "-j", strconv.Itoa(min(2, r.clients)),
		"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port()), "-U", "postgres"}
	if r.duration > 0 {
		args = append(args, "-T", strconv.Itoa(max(1, int(r.duration.Round(time.Second).Seconds()))))
	} else {
		args = append(args, "-t", strconv.Itoa(r.txPerClient))
	}
	if r.rate > 0 {
		args = append(args, "-R", strconv.Itoa(r.rate))
	}
	return append(args, "postgres")
}

// run runs pgbench against s and waits for it: at most the run's duration
// plus two minutes, or 15 minutes for a count of transactions.
func (w *workload) run(ctx context.Context, s *pgtest.Server, r pgbenchRun) (pgbenchResult, error) {
	timeout := 15 * time.Minute
	if r.duration > 0 {
		timeout = r.duration + 2*time.Minute
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, pgbenchPath(), w.args(r, s)...)
	cmd.Env = append(os.Environ(), "PGAPPNAME="+pgbenchApp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return pgbenchResult{}, fmt.Errorf("run pgbench: %w\n%s", err, out)
	}
	res, err := parsePgbench(out)
	if err != nil {
		return res, fmt.Errorf("run pgbench: %w\n%s", err, out)
	}
	res.cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return res, nil
}

var (
	tpsLine       = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	processedLine = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	// errPgbenchOutput reports output without the figures the bench needs.
	errPgbenchOutput = errors.New("pgbench printed no tps or transaction count")
)

// parsePgbench reads the throughput and the number of transactions from
// pgbench's summary.
func parsePgbench(out []byte) (pgbenchResult, error) {
	var r pgbenchResult
	tps, n := tpsLine.FindSubmatch(out), processedLine.FindSubmatch(out)
	if tps == nil || n == nil {
		return r, errPgbenchOutput
	}
	var err error
	if r.tps, err = strconv.ParseFloat(string(tps[1]), 64); err != nil {
		return r, fmt.Errorf("parse pgbench tps: %w", err)
	}
	if r.txs, err = strconv.ParseInt(string(n[1]), 10, 64); err != nil {
		return r, fmt.Errorf("parse pgbench transactions: %w", err)
	}
	return r, nil
}

func pgbenchPath() string {
	if p := filepath.Join(pgtest.BinDir(), "pgbench"); fileExists(p) {
		return p
	}
	return "pgbench"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
