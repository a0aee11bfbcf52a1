package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/certs"
	"github.com/casualdb/casualdb/internal/pgtest"
)

// casualdbSystem is one casualdb sidecar per site, with static peers.
type casualdbSystem struct {
	o        options
	c        *cluster
	log      *slog.Logger
	sidecars []*sidecar
	client   *http.Client
}

// sidecar is one casualdb process.
type sidecar struct {
	site  string
	cmd   *exec.Cmd
	admin int      // admin port: /status, /metrics, /debug/pprof
	logf  *os.File // its stdout and stderr
}

// startCasualDB writes each site's configuration and starts its sidecar,
// and waits until all are healthy.
func startCasualDB(ctx context.Context, o options, c *cluster, log *slog.Logger) (*casualdbSystem, error) {
	s := &casualdbSystem{o: o, c: c, log: log, client: &http.Client{Timeout: 5 * time.Second}}
	nats := make([]int, len(c.servers))
	for i := range nats {
		p, err := pgtest.FreePort()
		if err != nil {
			return nil, fmt.Errorf("pick nats port: %w", err)
		}
		nats[i] = p
	}
	for i, srv := range c.servers {
		if err := s.startSidecar(i, srv, nats); err != nil {
			s.close()
			return nil, err
		}
	}
	for _, sc := range s.sidecars {
		if err := s.waitHealthy(ctx, sc); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

func (s *casualdbSystem) startSidecar(i int, srv *pgtest.Server, nats []int) error {
	name := siteName(i)
	admin, err := pgtest.FreePort()
	if err != nil {
		return fmt.Errorf("pick admin port: %w", err)
	}
	var b strings.Builder
	natsTLS, scheme := "", "nats"
	if s.o.tls {
		dir := filepath.Join(s.c.dir, "certs")
		if err := certs.Generate(dir, []string{name}, nil); err != nil {
			return fmt.Errorf("certificates of sidecar %s: %w", name, err)
		}
		f := certs.For(dir, name)
		natsTLS, scheme = fmt.Sprintf("  tls:\n    cert: %s\n    key: %s\n    ca: %s\n", f.Cert, f.Key, f.CA), "tls"
	}
	fmt.Fprintf(&b, "site: %s\ndata_dir: %s\ndatabase:\n  dsn: %s\n  tables: [%s]\nnats:\n  listen: 127.0.0.1:%d\n%sadmin:\n  listen: 127.0.0.1:%d\n  pprof: %t\nlog:\n  level: %s\npeers:\n",
		name, filepath.Join(s.c.dir, "sidecar-"+name), srv.DSN(), strings.Join(replicatedTables, ", "), nats[i], natsTLS, admin, s.o.profile != "", s.o.logLevel)
	for j := range s.c.servers {
		if j != i {
			fmt.Fprintf(&b, "  - name: %s\n    nats_url: %s://127.0.0.1:%d\n", siteName(j), scheme, nats[j])
		}
	}
	cfg := filepath.Join(s.c.dir, "casualdb-"+name+".yml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write config of sidecar %s: %w", name, err)
	}
	logf, err := os.Create(filepath.Join(s.c.dir, "sidecar-"+name+".log"))
	if err != nil {
		return fmt.Errorf("create log of sidecar %s: %w", name, err)
	}
	cmd := exec.Command(s.o.binary, "run", "--config", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start sidecar %s: %w", name, err)
	}
	s.sidecars = append(s.sidecars, &sidecar{site: name, cmd: cmd, admin: admin, logf: logf})
	return nil
}

func (s *casualdbSystem) waitHealthy(ctx context.Context, sc *sidecar) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := s.get(ctx, sc, "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("wait for sidecar %s: not healthy after a minute (see its log)", sc.site)
}

func (s *casualdbSystem) get(ctx context.Context, sc *sidecar, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", sc.admin, path), nil)
	if err != nil {
		return nil, fmt.Errorf("get %s from sidecar %s: %w", path, sc.site, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s from sidecar %s: %w", path, sc.site, err)
	}
	return resp, nil
}

func (s *casualdbSystem) sidecarPIDs() []int {
	out := make([]int, len(s.sidecars))
	for i, sc := range s.sidecars {
		out[i] = sc.cmd.Process.Pid
	}
	return out
}

// pause stops site i's sidecar (SIGSTOP): it neither receives nor applies.
func (s *casualdbSystem) pause(_ context.Context, i int) error {
	if err := s.sidecars[i].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause sidecar %s: %w", siteName(i), err)
	}
	return nil
}

// resume continues site i's sidecar (SIGCONT).
func (s *casualdbSystem) resume(_ context.Context, i int) error {
	if err := s.sidecars[i].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("resume sidecar %s: %w", siteName(i), err)
	}
	return nil
}

// idle waits until every site's capture has processed the WAL its server
// had flushed when the wait began: the peers' capture still has to read
// past the WAL their apply wrote.
func (s *casualdbSystem) idle(ctx context.Context) error {
	deadline := time.Now().Add(waitTimeout)
	for i, sc := range s.sidecars {
		var target string
		qctx, cancel := context.WithTimeout(ctx, queryTimeout)
		err := s.c.conns[i].QueryRow(qctx, `SELECT pg_current_wal_flush_lsn()::text`).Scan(&target)
		cancel()
		if err != nil {
			return fmt.Errorf("read flush lsn at site %s: %w", sc.site, err)
		}
		want, err := casualdb.ParseLSN(target)
		if err != nil {
			return fmt.Errorf("parse flush lsn at site %s: %w", sc.site, err)
		}
		for {
			var st struct {
				Capture struct {
					ProcessedLSN string `json:"processed_lsn"`
				} `json:"capture"`
			}
			resp, err := s.get(ctx, sc, "/status")
			if err == nil {
				err = json.NewDecoder(resp.Body).Decode(&st)
				resp.Body.Close()
			}
			if err == nil {
				if got, perr := casualdb.ParseLSN(st.Capture.ProcessedLSN); perr == nil && got >= want {
					break
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("wait for capture at site %s: did not reach %s within %s", sc.site, target, waitTimeout)
			}
			if err := sleep(ctx, 50*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// observe scrapes the sidecars' delay histograms and, with -profile, takes
// a CPU profile of each for secs seconds; the returned func waits for the
// profiles and reports where the lag went in between.
func (s *casualdbSystem) observe(ctx context.Context, name string, secs int) func() stages {
	before := s.scrapeDelays(ctx)
	var wg sync.WaitGroup
	if s.o.profile != "" {
		dir := filepath.Join(s.o.profile, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			s.log.Warn("profile", "err", err)
		} else {
			for _, sc := range s.sidecars {
				wg.Go(func() {
					if err := s.profile(ctx, sc, dir, secs); err != nil {
						s.log.Warn("profile", "err", err)
					}
				})
			}
		}
	}
	return func() stages {
		wg.Wait()
		return stageReport(before, s.scrapeDelays(ctx))
	}
}

func (s *casualdbSystem) profile(ctx context.Context, sc *sidecar, dir string, secs int) error {
	client := &http.Client{Timeout: time.Duration(secs+30) * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", sc.admin, secs)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("profile sidecar %s: %w", sc.site, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("profile sidecar %s: %w", sc.site, err)
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(dir, "cpu-"+sc.site+".pprof"))
	if err != nil {
		return fmt.Errorf("profile sidecar %s: %w", sc.site, err)
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("profile sidecar %s: %w", sc.site, err)
	}
	return nil
}

// close stops every sidecar (continuing a paused one first) and waits for
// it, killing it after 30 seconds.
func (s *casualdbSystem) close() {
	for _, sc := range s.sidecars {
		_ = sc.cmd.Process.Signal(syscall.SIGCONT)
		_ = sc.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- sc.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			s.log.Warn("sidecar did not stop in 30s: killing it", "site", sc.site)
			_ = sc.cmd.Process.Kill()
			<-done
		}
		sc.logf.Close()
	}
	s.sidecars = nil
}

// delayKey names one bucket of casualdb_delay_seconds for origin a.
type delayKey struct {
	site, stage string
	le          float64
}

var bucketLine = regexp.MustCompile(`^casualdb_delay_seconds_bucket\{origin="a",stage="([a-z_]+)",le="([^"]+)"\} ([0-9.e+]+)$`)

// scrapeDelays reads the cumulative delay histograms of origin a's
// transactions from every sidecar; a sidecar that does not answer is left
// out.
func (s *casualdbSystem) scrapeDelays(ctx context.Context) map[delayKey]float64 {
	out := map[delayKey]float64{}
	for _, sc := range s.sidecars {
		resp, err := s.get(ctx, sc, "/metrics")
		if err != nil {
			s.log.Warn("scrape metrics", "err", err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			s.log.Warn("scrape metrics", "site", sc.site, "err", err)
			continue
		}
		for _, line := range strings.Split(string(body), "\n") {
			m := bucketLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			le, err1 := strconv.ParseFloat(m[2], 64)
			n, err2 := strconv.ParseFloat(m[3], 64)
			if m[2] == "+Inf" {
				le, err1 = math.Inf(1), nil
			}
			if err1 == nil && err2 == nil {
				out[delayKey{sc.site, m[1], le}] = n
			}
		}
	}
	return out
}

// stageKey names one delay histogram: a site and a stage.
type stageKey struct{ site, stage string }

// stages is what the delay histograms of origin a's transactions showed over
// a run: a line per site and stage, and the p99 as a bucket bound in seconds
// (+Inf beyond the last bucket).
type stages struct {
	lines []string
	p99   map[stageKey]float64
}

// stageReport turns two scrapes into p50/p99 per site and stage.
func stageReport(before, after map[delayKey]float64) stages {
	buckets := map[stageKey][]delayKey{}
	for k := range after {
		s := stageKey{k.site, k.stage}
		buckets[s] = append(buckets[s], k)
	}
	out := stages{p99: map[stageKey]float64{}}
	for s, ks := range buckets {
		sort.Slice(ks, func(i, j int) bool { return ks[i].le < ks[j].le })
		total := after[ks[len(ks)-1]] - before[ks[len(ks)-1]]
		if total == 0 {
			continue
		}
		// The bound of the first bucket holding at least p of the total.
		bound := func(p float64) (float64, bool) {
			for _, k := range ks {
				if after[k]-before[k] >= p*total {
					return k.le, true
				}
			}
			return 0, false
		}
		q := func(p float64) string {
			le, ok := bound(p)
			switch {
			case !ok || (math.IsInf(le, 1) && len(ks) < 2):
				return "?"
			case math.IsInf(le, 1):
				return "> " + strconv.FormatFloat(ks[len(ks)-2].le*1000, 'f', -1, 64)
			}
			return "<= " + strconv.FormatFloat(le*1000, 'f', -1, 64)
		}
		if le, ok := bound(0.99); ok {
			out.p99[s] = le
		}
		out.lines = append(out.lines, fmt.Sprintf("site %s %-10s p50 %-8s p99 %-8s ms  (%.0f txs)", s.site, s.stage, q(0.5), q(0.99), total))
	}
	sort.Strings(out.lines)
	return out
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("wait: %w", ctx.Err())
	case <-t.C:
		return nil
	}
}
