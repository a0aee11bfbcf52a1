// Command bench measures CasualDB on this machine: what the sidecar costs
// the origin's throughput, replication lag at a fixed rate, and catch-up
// after the load, with pglogical doing the same job beside it. Run it with
// `make bench`.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

type options struct {
	duration  time.Duration
	rate      int
	clients   int
	pglogical bool
	binary    string
	keep      bool
	profile   string
	logLevel  string
}

// result is one system's figures.
type result struct {
	name             string
	baseTPS, replTPS float64
	// The same two runs with site a's PostgreSQL and pgbench on CPU 0 and
	// everything else on CPU 1 (pin.go); zero when not measured.
	basePinned, replPinned float64
	throttledTPS           float64
	p50, p99, pmax         time.Duration
	catchUp                time.Duration
	probes                 int
	note                   string
	stages                 []string // where the lag goes (casualdb only)
	cpu                    []string // who used the CPU during the throttled run
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "length of each pgbench run")
	flag.IntVar(&o.rate, "rate", 1000, "transactions per second of the throttled run")
	flag.IntVar(&o.clients, "clients", 4, "pgbench clients")
	flag.BoolVar(&o.pglogical, "pglogical", true, "measure pglogical too (if installed)")
	flag.StringVar(&o.binary, "binary", "", "casualdb binary (default: build it)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory")
	flag.StringVar(&o.logLevel, "log-level", "warn", "sidecars' log level (their logs are in the temporary directory: use -keep)")
	flag.StringVar(&o.profile, "profile", "", "write CPU profiles of the sidecars during the throttled run into this directory")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "casualdb-bench-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Println("keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	if o.binary == "" {
		o.binary = filepath.Join(dir, "casualdb-bin")
		build := exec.Command("go", "build", "-o", o.binary, "./cmd/casualdb")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build casualdb: %w", err)
		}
	}
	ctx := context.Background()
	var results []result
	r, err := benchCasualDB(ctx, o, filepath.Join(dir, "casualdb"))
	if err != nil {
		return fmt.Errorf("casualdb: %w", err)
	}
	results = append(results, r)
	if o.pglogical {
		if _, err := os.Stat("/usr/share/postgresql/15/extension/pglogical.control"); err != nil {
			fmt.Println("pglogical is not installed (apt-get install postgresql-15-pglogical): measuring casualdb only")
		} else {
			r, err := benchPglogical(ctx, o, filepath.Join(dir, "pglogical"))
			if err != nil {
				return fmt.Errorf("pglogical: %w", err)
			}
			results = append(results, r)
		}
	}
	report(o, results)
	return nil
}

const schema = `
CREATE TABLE bench_kv (k int PRIMARY KEY, v int NOT NULL, t timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE bench_probe (id bigint PRIMARY KEY, sent timestamptz NOT NULL);
CREATE TABLE bench_arrival (id bigint NOT NULL, arrived timestamptz NOT NULL);
CREATE FUNCTION bench_arrive() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench_arrival VALUES (NEW.id, clock_timestamp()); RETURN NEW; END $$;
CREATE TRIGGER bench_arrive AFTER INSERT ON bench_probe FOR EACH ROW EXECUTE FUNCTION bench_arrive();
ALTER TABLE bench_probe ENABLE ALWAYS TRIGGER bench_arrive;
`

const script = `\set k random(1, 10000)
INSERT INTO bench_kv (k, v) VALUES (:k, 1) ON CONFLICT (k) DO UPDATE SET v = bench_kv.v + 1, t = clock_timestamp();
`

// cluster is three PostgreSQL servers.
type cluster struct {
	dir     string
	servers []*pgtest.Server
	admins  []int // casualdb sidecars' admin ports, for -profile
	pids    []int // casualdb sidecars' process ids
}

// cpuGroups lists the processes whose CPU the throttled run reports.
func (c *cluster) cpuGroups() []cpuGroup {
	var gs []cpuGroup
	for i, s := range c.servers {
		gs = append(gs, cpuGroup{name: fmt.Sprintf("postgres %c (all processes)", 'a'+i), pid: s.PID(), tree: true})
	}
	for i, pid := range c.pids {
		gs = append(gs, cpuGroup{name: fmt.Sprintf("sidecar %c", 'a'+i), pid: pid})
	}
	return gs
}

func startCluster(ctx context.Context, dir string, settings map[string]string) (*cluster, error) {
	c := &cluster{dir: dir}
	for _, name := range []string{"a", "b", "c"} {
		s, err := pgtest.Start(ctx, pgtest.Options{Dir: dir, Name: name, Settings: settings})
		if err != nil {
			c.stop()
			return nil, err
		}
		c.servers = append(c.servers, s)
		if err := s.Exec(ctx, schema); err != nil {
			c.stop()
			return nil, fmt.Errorf("schema at %s: %w", name, err)
		}
	}
	return c, nil
}

// settle vacuums and checkpoints every server, so that the autovacuum and
// checkpoint the unthrottled run left due do not land in the throttled one.
func (c *cluster) settle(ctx context.Context) error {
	for i, s := range c.servers {
		if err := s.Exec(ctx, `VACUUM`); err != nil {
			return fmt.Errorf("vacuum site %c: %w", 'a'+i, err)
		}
		if err := s.Exec(ctx, `CHECKPOINT`); err != nil {
			return fmt.Errorf("checkpoint site %c: %w", 'a'+i, err)
		}
	}
	return nil
}

func (c *cluster) stop() {
	for _, s := range c.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = s.Stop(ctx)
		cancel()
	}
}

var tpsLine = regexp.MustCompile(`tps = ([0-9.]+)`)

// pgbench runs the upsert workload at s and returns its throughput; cpu >= 0
// runs it on that CPU only.
func pgbench(ctx context.Context, o options, s *pgtest.Server, dir string, rate, cpu int) (float64, error) {
	path := filepath.Join(dir, "upsert.sql")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		return 0, err
	}
	args := []string{"-n", "-f", path, "-c", strconv.Itoa(o.clients), "-j", "2", "-T", strconv.Itoa(int(o.duration.Seconds())),
		"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port()), "-U", "postgres", "postgres"}
	if rate > 0 {
		args = append(args, "-R", strconv.Itoa(rate))
	}
	cctx, cancel := context.WithTimeout(ctx, o.duration+time.Minute)
	defer cancel()
	name := pgbenchPath()
	if cpu >= 0 {
		args = append([]string{"-c", strconv.Itoa(cpu), name}, args...)
		name = "taskset"
	}
	out, err := exec.CommandContext(cctx, name, args...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("pgbench printed no tps:\n%s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

func pgbenchPath() string {
	if p := filepath.Join(pgtest.BinDir(), "pgbench"); fileExists(p) {
		return p
	}
	return "pgbench"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// throttled runs pgbench at a fixed rate while probing lag every 10ms, then
// measures the catch-up of the peers and the lag distribution.
func throttled(ctx context.Context, o options, c *cluster, r *result) error {
	a := c.servers[0]
	conn, err := pgx.Connect(ctx, a.DSN())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	probeCtx, stopProbe := context.WithCancel(ctx)
	probes := make(chan int, 1)
	go func() {
		n := 0
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-probeCtx.Done():
				probes <- n
				return
			case <-t.C:
				qctx, cancel := context.WithTimeout(probeCtx, 5*time.Second)
				if _, err := conn.Exec(qctx, `INSERT INTO bench_probe VALUES ($1, clock_timestamp())`, n+1); err == nil {
					n++
				}
				cancel()
			}
		}
	}()
	before := scrapeDelays(c)
	groups := c.cpuGroups()
	cpuBefore := sampleCPU(groups)
	profiled := profile(ctx, o, c)
	tps, err := pgbench(ctx, o, a, c.dir, o.rate, -1)
	cpuAfter := sampleCPU(groups)
	stopProbe()
	profiled()
	r.cpu = cpuReport(groups, cpuBefore, cpuAfter)
	r.probes = <-probes
	if err != nil {
		return err
	}
	r.throttledTPS = tps
	end := time.Now()
	r.stages = stageReport(before, scrapeDelays(c))
	want, err := digest(ctx, a)
	if err != nil {
		return err
	}
	deadline := end.Add(5 * time.Minute)
	for _, peer := range c.servers[1:] {
		for {
			got, err := digest(ctx, peer)
			if err != nil {
				return err
			}
			if got == want {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("peer did not catch up in 5 minutes: %s vs %s", got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	r.catchUp = time.Since(end)
	var lags []time.Duration
	for _, peer := range c.servers[1:] {
		pc, err := pgx.Connect(ctx, peer.DSN())
		if err != nil {
			return err
		}
		rows, err := pc.Query(ctx, `SELECT extract(epoch FROM a.arrived - p.sent)::float8 FROM bench_arrival a JOIN bench_probe p USING (id)`)
		if err != nil {
			pc.Close(ctx)
			return err
		}
		for rows.Next() {
			var s float64
			if err := rows.Scan(&s); err != nil {
				rows.Close()
				pc.Close(ctx)
				return err
			}
			lags = append(lags, time.Duration(s*float64(time.Second)))
		}
		rows.Close()
		pc.Close(ctx)
	}
	if len(lags) == 0 {
		return fmt.Errorf("no probe arrived at the peers")
	}
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	q := func(p float64) time.Duration { return lags[min(len(lags)-1, int(p*float64(len(lags))))] }
	r.p50, r.p99, r.pmax = q(0.50), q(0.99), lags[len(lags)-1]
	return nil
}

// profile fetches a CPU profile from every sidecar while the throttled run
// goes on, when -profile names a directory; the returned func waits for them.
func profile(ctx context.Context, o options, c *cluster) (wait func()) {
	if o.profile == "" || len(c.admins) == 0 {
		return func() {}
	}
	if err := os.MkdirAll(o.profile, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return func() {}
	}
	secs := max(1, int(o.duration.Seconds())-2)
	done := make(chan struct{}, len(c.admins))
	for i, port := range c.admins {
		go func() {
			defer func() { done <- struct{}{} }()
			client := &http.Client{Timeout: time.Duration(secs+30) * time.Second}
			resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", port, secs))
			if err != nil {
				fmt.Fprintln(os.Stderr, "profile:", err)
				return
			}
			defer resp.Body.Close()
			f, err := os.Create(filepath.Join(o.profile, fmt.Sprintf("cpu-%c.pprof", 'a'+i)))
			if err != nil {
				fmt.Fprintln(os.Stderr, "profile:", err)
				return
			}
			defer f.Close()
			if _, err := io.Copy(f, resp.Body); err != nil {
				fmt.Fprintln(os.Stderr, "profile:", err)
			}
		}()
	}
	return func() {
		for range c.admins {
			<-done
		}
	}
}

// delayKey names one bucket of casualdb_delay_seconds for origin a.
type delayKey struct {
	site, stage string
	le          float64
}

var bucketLine = regexp.MustCompile(`^casualdb_delay_seconds_bucket\{origin="a",stage="([a-z_]+)",le="([^"]+)"\} ([0-9.e+]+)$`)

// scrapeDelays reads the cumulative delay histograms of origin a's
// transactions from every sidecar.
func scrapeDelays(c *cluster) map[delayKey]float64 {
	out := map[delayKey]float64{}
	client := &http.Client{Timeout: 5 * time.Second}
	for i, port := range c.admins {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		if err != nil {
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
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
				out[delayKey{string(rune('a' + i)), m[1], le}] = n
			}
		}
	}
	return out
}

// stageReport turns two scrapes into p50/p99 per site and stage.
func stageReport(before, after map[delayKey]float64) []string {
	type series struct{ site, stage string }
	buckets := map[series][]delayKey{}
	for k := range after {
		s := series{k.site, k.stage}
		buckets[s] = append(buckets[s], k)
	}
	var lines []string
	for s, ks := range buckets {
		sort.Slice(ks, func(i, j int) bool { return ks[i].le < ks[j].le })
		total := after[ks[len(ks)-1]] - before[ks[len(ks)-1]]
		if total == 0 {
			continue
		}
		q := func(p float64) string {
			for _, k := range ks {
				if after[k]-before[k] >= p*total {
					if math.IsInf(k.le, 1) {
						return "> " + strconv.FormatFloat(ks[len(ks)-2].le*1000, 'f', -1, 64)
					}
					return "<= " + strconv.FormatFloat(k.le*1000, 'f', -1, 64)
				}
			}
			return "?"
		}
		lines = append(lines, fmt.Sprintf("site %s %-10s p50 %-8s p99 %-8s ms  (%.0f txs)", s.site, s.stage, q(0.5), q(0.99), total))
	}
	sort.Strings(lines)
	return lines
}

func digest(ctx context.Context, s *pgtest.Server) (string, error) {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(qctx, s.DSN())
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var d string
	err = conn.QueryRow(qctx, `SELECT count(*) || '/' || coalesce(sum(v), 0) || '/' || (SELECT count(*) FROM bench_probe) FROM bench_kv`).Scan(&d)
	return d, err
}

// baseline starts the three servers, measures site a's throughput with no
// replication into r, and empties the table again: neither system copies
// the rows written before it runs here (CasualDB has no initial copy yet;
// pglogical subscribes with synchronize_data := false), so every site
// starts from the same empty table.
func baseline(ctx context.Context, o options, dir string, settings map[string]string, r *result) (*cluster, error) {
	c, err := startCluster(ctx, dir, settings)
	if err != nil {
		return nil, err
	}
	if r.baseTPS, err = pgbench(ctx, o, c.servers[0], dir, 0, -1); err == nil {
		r.basePinned, err = pinnedRun(ctx, o, c, dir)
	}
	if err == nil {
		err = c.servers[0].Exec(ctx, `TRUNCATE bench_kv`)
	}
	if err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// pinnedRun runs the unthrottled workload with site a's PostgreSQL and
// pgbench on CPU 0 and everything else on CPU 1, then unpins (0: the
// machine has fewer than two CPUs).
func pinnedRun(ctx context.Context, o options, c *cluster, dir string) (float64, error) {
	if !canPin() {
		return 0, nil
	}
	if err := c.pin(true); err != nil {
		return 0, err
	}
	tps, err := pgbench(ctx, o, c.servers[0], dir, 0, 0)
	if uerr := c.pin(false); err == nil {
		err = uerr
	}
	return tps, err
}

// sidecar is one casualdb process.
type sidecar struct {
	cmd   *exec.Cmd
	admin int
}

func benchCasualDB(ctx context.Context, o options, dir string) (result, error) {
	r := result{name: "casualdb"}
	c, err := baseline(ctx, o, dir, nil, &r)
	if err != nil {
		return r, err
	}
	defer c.stop()
	var nats []int
	for range c.servers {
		p, err := pgtest.FreePort()
		if err != nil {
			return r, err
		}
		nats = append(nats, p)
	}
	var scs []*sidecar
	defer func() {
		for _, s := range scs {
			_ = s.cmd.Process.Signal(syscall.SIGTERM)
			_ = s.cmd.Wait()
		}
	}()
	names := []string{"a", "b", "c"}
	for i, s := range c.servers {
		admin, err := pgtest.FreePort()
		if err != nil {
			return r, err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "site: %s\ndata_dir: %s\ndatabase:\n  dsn: %s\n  tables: [bench_kv, bench_probe]\nnats:\n  listen: 127.0.0.1:%d\nadmin:\n  listen: 127.0.0.1:%d\nlog:\n  level: %s\npeers:\n",
			names[i], filepath.Join(dir, "sidecar-"+names[i]), s.DSN(), nats[i], admin, o.logLevel)
		for j := range c.servers {
			if j != i {
				fmt.Fprintf(&b, "  - name: %s\n    nats_url: nats://127.0.0.1:%d\n", names[j], nats[j])
			}
		}
		cfg := filepath.Join(dir, "casualdb-"+names[i]+".yml")
		if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
			return r, err
		}
		logf, err := os.Create(filepath.Join(dir, "sidecar-"+names[i]+".log"))
		if err != nil {
			return r, err
		}
		defer logf.Close()
		cmd := exec.Command(o.binary, "run", "--config", cfg)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return r, err
		}
		scs = append(scs, &sidecar{cmd: cmd, admin: admin})
		c.admins = append(c.admins, admin)
		c.pids = append(c.pids, cmd.Process.Pid)
	}
	for _, s := range scs {
		if err := waitHealthy(ctx, s.admin); err != nil {
			return r, err
		}
	}
	// The peers must hold the rows of the baseline run too before measuring.
	if err := waitSame(ctx, c, 5*time.Minute); err != nil {
		return r, err
	}
	if r.replTPS, err = pgbench(ctx, o, c.servers[0], dir, 0, -1); err != nil {
		return r, err
	}
	if err := waitSame(ctx, c, 5*time.Minute); err != nil {
		return r, err
	}
	if r.replPinned, err = pinnedRun(ctx, o, c, dir); err != nil {
		return r, err
	}
	if err := waitSame(ctx, c, 5*time.Minute); err != nil {
		return r, err
	}
	// The peers' capture still has to read past the WAL their apply wrote:
	// measure the throttled run only once every sidecar is idle.
	if err := waitCaptured(ctx, c, 5*time.Minute); err != nil {
		return r, err
	}
	if err := c.settle(ctx); err != nil {
		return r, err
	}
	return r, throttled(ctx, o, c, &r)
}

// waitCaptured waits until every site's capture has processed the WAL its
// server had flushed when the wait began.
func waitCaptured(ctx context.Context, c *cluster, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 5 * time.Second}
	for i, s := range c.servers {
		var target string
		conn, err := pgx.Connect(ctx, s.DSN())
		if err != nil {
			return err
		}
		err = conn.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()::text`).Scan(&target)
		conn.Close(context.Background())
		if err != nil {
			return err
		}
		want, err := casualdb.ParseLSN(target)
		if err != nil {
			return err
		}
		for {
			var st struct {
				Capture struct {
					ProcessedLSN string `json:"processed_lsn"`
				} `json:"capture"`
			}
			resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/status", c.admins[i]))
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
				return fmt.Errorf("capture at site %c did not reach %s within %s", 'a'+i, target, timeout)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func waitHealthy(ctx context.Context, port int) error {
	deadline := time.Now().Add(time.Minute)
	client := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("sidecar on admin port %d not healthy after a minute", port)
}

func waitSame(ctx context.Context, c *cluster, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		want, err := digest(ctx, c.servers[0])
		if err != nil {
			return err
		}
		same := true
		for _, s := range c.servers[1:] {
			got, err := digest(ctx, s)
			if err != nil {
				return err
			}
			same = same && got == want
		}
		if same {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sites did not converge within %s", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func benchPglogical(ctx context.Context, o options, dir string) (result, error) {
	r := result{name: "pglogical"}
	c, err := baseline(ctx, o, dir, map[string]string{"shared_preload_libraries": "pglogical", "track_commit_timestamp": "on"}, &r)
	if err != nil {
		return r, err
	}
	defer c.stop()
	names := []string{"a", "b", "c"}
	for i, s := range c.servers {
		err := s.Exec(ctx, fmt.Sprintf(`CREATE EXTENSION pglogical;
			SELECT pglogical.create_node(node_name := '%s', dsn := 'host=127.0.0.1 port=%d dbname=postgres user=postgres');
			SELECT pglogical.replication_set_add_table('default', 'bench_kv');
			SELECT pglogical.replication_set_add_table('default', 'bench_probe');`, names[i], s.Port()))
		if err != nil {
			return r, fmt.Errorf("set up node %s: %w", names[i], err)
		}
	}
	for i, s := range c.servers {
		for j, p := range c.servers {
			if i == j {
				continue
			}
			err := s.Exec(ctx, fmt.Sprintf(`SELECT pglogical.create_subscription(subscription_name := '%s_from_%s',
				provider_dsn := 'host=127.0.0.1 port=%d dbname=postgres user=postgres', replication_sets := ARRAY['default'],
				forward_origins := '{}', synchronize_data := false, synchronize_structure := false)`, names[i], names[j], p.Port()))
			if err != nil {
				return r, fmt.Errorf("subscribe %s to %s: %w", names[i], names[j], err)
			}
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for _, s := range c.servers {
		for {
			conn, err := pgx.Connect(ctx, s.DSN())
			if err != nil {
				return r, err
			}
			var n int
			err = conn.QueryRow(ctx, `SELECT count(*) FROM pglogical.show_subscription_status() WHERE status <> 'replicating'`).Scan(&n)
			conn.Close(ctx)
			if err != nil {
				return r, err
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				return r, fmt.Errorf("pglogical subscriptions not replicating after 2 minutes")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if r.replTPS, err = pgbench(ctx, o, c.servers[0], dir, 0, -1); err != nil {
		return r, err
	}
	if err := waitSame(ctx, c, 5*time.Minute); err != nil {
		return r, err
	}
	if r.replPinned, err = pinnedRun(ctx, o, c, dir); err != nil {
		return r, err
	}
	if err := waitSame(ctx, c, 5*time.Minute); err != nil {
		return r, err
	}
	if err := c.settle(ctx); err != nil {
		return r, err
	}
	return r, throttled(ctx, o, c, &r)
}

func report(o options, rs []result) {
	fmt.Printf("\nCasualDB bench: 3 sites on one machine (%d cores), fsync=off, pgbench %d clients, %s per run\n", numCPU(), o.clients, o.duration)
	fmt.Printf("workload: single-row upserts over 10,000 keys at site a; lag probes every 10 ms\n\n")
	fmt.Printf("%-34s", "")
	for _, r := range rs {
		fmt.Printf("%14s", r.name)
	}
	fmt.Println()
	row := func(label string, f func(r result) string) {
		fmt.Printf("%-34s", label)
		for _, r := range rs {
			fmt.Printf("%14s", f(r))
		}
		fmt.Println()
	}
	ms := func(d time.Duration) string { return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) }
	row("shared: local tps, not replicating", func(r result) string { return fmt.Sprintf("%.0f", r.baseTPS) })
	row("shared: local tps, replicating", func(r result) string { return fmt.Sprintf("%.0f", r.replTPS) })
	row("shared: cost to the origin", func(r result) string { return fmt.Sprintf("%.1f%%", 100*(1-r.replTPS/r.baseTPS)) })
	if rs[0].basePinned > 0 {
		row("pinned: local tps, not replicating", func(r result) string { return fmt.Sprintf("%.0f", r.basePinned) })
		row("pinned: local tps, replicating", func(r result) string { return fmt.Sprintf("%.0f", r.replPinned) })
		row("pinned: cost to the origin", func(r result) string { return fmt.Sprintf("%.1f%%", 100*(1-r.replPinned/r.basePinned)) })
	}
	row(fmt.Sprintf("throttled run tps (-R %d)", o.rate), func(r result) string { return fmt.Sprintf("%.0f", r.throttledTPS) })
	row("lag p50 (ms)", func(r result) string { return ms(r.p50) })
	row("lag p99 (ms)", func(r result) string { return ms(r.p99) })
	row("lag max (ms)", func(r result) string { return ms(r.pmax) })
	row("catch-up after the load (ms)", func(r result) string { return ms(r.catchUp) })
	row("lag probes", func(r result) string { return strconv.Itoa(r.probes) })
	for _, r := range rs {
		if len(r.stages) > 0 {
			fmt.Printf("\n%s, commit at a to each stage during the throttled run (histogram estimates):\n", r.name)
			for _, l := range r.stages {
				fmt.Println("  " + l)
			}
		}
	}
	for _, r := range rs {
		if len(r.cpu) > 0 {
			fmt.Printf("\n%s, CPU used during the throttled run (pgbench and the bench itself are in everything else):\n", r.name)
			for _, l := range r.cpu {
				fmt.Println("  " + l)
			}
		}
	}
	fmt.Printf("\nshared: everything on every core. pinned: site a's PostgreSQL (its walsenders included) and pgbench on CPU 0;\n")
	fmt.Printf("the peers and every sidecar on CPU 1, as when the peers are other machines and the sidecar has its own CPU.\n")
	fmt.Printf("\ntargets: lag p99 < 100 ms at 1,000 tps; cost to the origin < 10%%\n")
}

func numCPU() int { return runtime.NumCPU() }
