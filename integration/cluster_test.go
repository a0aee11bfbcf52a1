package integration

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/certs"
	"github.com/casualdb/casualdb/internal/netproxy"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/ship"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
)

// binary is the casualdb command built once for the package.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "casualdb-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "casualdb")
	build := exec.Command("go", "build", raceFlag(), "-o", binary, "../cmd/casualdb")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build casualdb:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// site is one PostgreSQL plus one casualdb process.
type site struct {
	name       string
	pg         *pgtest.Server
	natsPort   int
	adminPort  int
	gossipPort int // with clusterOptions.Gossip
	dir        string
	cmd        *exec.Cmd
	done       chan struct{}
	runs       int
}

type cluster struct {
	t      testing.TB
	sites  []*site
	extra  []string // extra config lines for every site
	gossip bool
	// hintRetention is clusterOptions.HintRetention.
	hintRetention time.Duration
	// siteExtra is clusterOptions.SiteExtra.
	siteExtra map[int][]string
	// links[i][j] carries site i's connection to site j's NATS (i ships to
	// j); nil without clusterOptions.Links.
	links    [][]*netproxy.Proxy
	barriers int          // rounds of c.barrier so far
	ports    map[int]bool // the sidecars' and links' ports, each given out once
	// certs holds a development CA and a certificate per site: every site
	// speaks mutual TLS, with per-site permissions, as a user runs them.
	certs string
}

// clusterOptions configures newClusterWith. The zero value of every field
// but Sites is newCluster's behaviour.
type clusterOptions struct {
	// Sites is the number of sites, named a, b, c, d, e: 1 to 5.
	Sites int
	// Schema is SQL run at every site before its sidecar starts.
	Schema string
	// Links routes the connection of each site's sidecar to each peer's
	// NATS through its own proxy, so that c.cut, c.hold and c.heal control
	// each direction of shipping on its own.
	Links bool
	// FakeTime, by site index, runs that site's PostgreSQL on a wall clock
	// offset from the real one (libfaketime syntax, e.g. "+1h"): its commit
	// timestamps, and so the HLCs of its writes, are off by that much. The
	// sidecars keep the real clock.
	FakeTime map[int]string
	// Extra are config lines added to every site's configuration.
	Extra []string
	// SiteExtra, by site index, are config lines added to that site's
	// configuration only, after Extra (so a site can have its own gc
	// block, say).
	SiteExtra map[int][]string
	// Gossip replaces the static peers lists with gossip membership: each
	// site names the others' gossip addresses to join (any one live one
	// suffices), and sites learn each other's NATS from gossip. With Links
	// too, each site also lists its peers with their links' addresses
	// (a configured address wins over the advertised one), so that the
	// links control shipping while gossip runs beside them, uncut.
	Gossip bool
	// HintRetention, with Gossip, sets cluster.hint_retention (0: the
	// default).
	HintRetention time.Duration
}

// newCluster starts n PostgreSQL servers with schema applied at each, and
// their sidecars.
func newCluster(t testing.TB, n int, schema string) *cluster {
	t.Helper()
	return newClusterWith(t, clusterOptions{Sites: n, Schema: schema})
}

// newClusterWith starts a cluster as opts says and waits until every
// sidecar is healthy. Everything stops when the test ends: the sidecars,
// then the links, then the PostgreSQL servers.
func newClusterWith(t testing.TB, opts clusterOptions) *cluster {
	t.Helper()
	names := []string{"a", "b", "c", "d", "e"}
	if opts.Sites < 1 || opts.Sites > len(names) {
		t.Fatalf("newClusterWith: %d sites, want 1 to %d", opts.Sites, len(names))
	}
	for i := range opts.FakeTime {
		if i < 0 || i >= opts.Sites {
			t.Fatalf("newClusterWith: FakeTime for site %d of %d", i, opts.Sites)
		}
	}
	c := &cluster{t: t, ports: map[int]bool{}}
	c.extra = opts.Extra
	c.siteExtra = opts.SiteExtra
	// Every PostgreSQL listens before the sidecars' ports are chosen, so
	// that no server takes one of them in between.
	for i, name := range names[:opts.Sites] {
		pg := pgtest.NewServerWith(t, pgtest.Options{Name: name, FakeTime: opts.FakeTime[i]})
		if opts.Schema != "" {
			if err := pg.Exec(context.Background(), opts.Schema); err != nil {
				t.Fatalf("schema at %s: %v", name, err)
			}
		}
		c.sites = append(c.sites, &site{name: name, pg: pg, dir: t.TempDir()})
	}
	for _, s := range c.sites {
		s.natsPort, s.adminPort = c.freePort(), c.freePort()
		if opts.Gossip {
			s.gossipPort = c.freePort()
		}
	}
	c.gossip = opts.Gossip
	c.hintRetention = opts.HintRetention
	c.certs = t.TempDir()
	if err := certs.Generate(c.certs, names[:opts.Sites], nil); err != nil {
		t.Fatal(err)
	}
	if opts.Links {
		c.startLinks()
	}
	for i := range c.sites {
		c.start(i)
	}
	for i := range c.sites {
		c.waitHealthy(i)
	}
	t.Cleanup(func() {
		for i := range c.sites {
			c.stop(i)
			if d := os.Getenv("CASUALDB_DUMP"); d != "" {
				files, _ := filepath.Glob(filepath.Join(c.sites[i].dir, "sidecar-*.log"))
				for _, f := range files {
					b, _ := os.ReadFile(f)
					_ = os.WriteFile(filepath.Join(d, c.sites[i].name+"-"+filepath.Base(f)), b, 0o644)
				}
			}
			if t.Failed() {
				t.Logf("sidecar %s log tail:\n%s", c.sites[i].name, c.logTail(i, 40))
			}
		}
	})
	return c
}

// freePort returns a free port that the cluster has not given out yet:
// pgtest.FreePort alone may hand out the same port twice, since the port
// is free again until the sidecar listens on it.
func (c *cluster) freePort() int {
	c.t.Helper()
	for {
		port, err := pgtest.FreePort()
		if err != nil {
			c.t.Fatal(err)
		}
		if !c.ports[port] {
			c.ports[port] = true
			return port
		}
	}
}

// startLinks starts a proxy for every ordered pair of sites, each closed
// when the test ends (after the sidecars stop: cleanups run last first).
func (c *cluster) startLinks() {
	c.t.Helper()
	c.links = make([][]*netproxy.Proxy, len(c.sites))
	log := slog.New(slog.NewTextHandler(testWriter{c.t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	for i, from := range c.sites {
		c.links[i] = make([]*netproxy.Proxy, len(c.sites))
		for j, to := range c.sites {
			if i == j {
				continue
			}
			p := c.startLink(netproxy.Config{
				Target: fmt.Sprintf("127.0.0.1:%d", to.natsPort),
				Name:   from.name + "->" + to.name,
				Logger: log,
			})
			c.t.Cleanup(func() {
				if err := p.Close(); err != nil {
					c.t.Errorf("link %s->%s: %v", from.name, to.name, err)
				}
			})
			c.links[i][j] = p
		}
	}
}

// startLink starts a proxy on a free port that the cluster has not given
// out yet.
func (c *cluster) startLink(cfg netproxy.Config) *netproxy.Proxy {
	c.t.Helper()
	for {
		p, err := netproxy.Start(cfg)
		if err != nil {
			c.t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(p.Addr())
		n, _ := strconv.Atoi(port)
		if !c.ports[n] {
			c.ports[n] = true
			return p
		}
		if err := p.Close(); err != nil {
			c.t.Fatal(err)
		}
	}
}

// link returns the proxy that carries what site i ships to site j.
func (c *cluster) link(i, j int) *netproxy.Proxy {
	c.t.Helper()
	if c.links == nil {
		c.t.Fatal("the cluster has no links: start it with clusterOptions.Links")
	}
	if i == j || i < 0 || j < 0 || i >= len(c.sites) || j >= len(c.sites) {
		c.t.Fatalf("no link from site %d to site %d", i, j)
	}
	return c.links[i][j]
}

// cut stops site i from shipping to site j: the sidecar's open connection
// to j's NATS is reset and new ones fail until heal. Only that direction:
// j still ships to i.
func (c *cluster) cut(i, j int) {
	c.t.Helper()
	c.t.Logf("link %s->%s: cut", c.sites[i].name, c.sites[j].name)
	c.link(i, j).Cut()
}

// hold delays what site i ships to site j: the connection stays open but
// no byte moves either way until heal, which delivers everything in order.
// The sidecar sees no error until its own timeouts fire (an unacknowledged
// publish: 10s), then reconnects, and its new connections are held too.
func (c *cluster) hold(i, j int) {
	c.t.Helper()
	c.t.Logf("link %s->%s: held", c.sites[i].name, c.sites[j].name)
	c.link(i, j).Hold()
}

// heal lets site i ship to site j again after cut or hold.
func (c *cluster) heal(i, j int) {
	c.t.Helper()
	c.t.Logf("link %s->%s: up", c.sites[i].name, c.sites[j].name)
	c.link(i, j).Heal()
}

// testWriter writes log lines to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func (c *cluster) config(s *site) string {
	var b strings.Builder
	fmt.Fprintf(&b, "site: %s\ndata_dir: %s\n", s.name, filepath.Join(s.dir, "data"))
	fmt.Fprintf(&b, "database:\n  dsn: %s\n", s.pg.DSN())
	f := certs.For(c.certs, s.name)
	fmt.Fprintf(&b, "nats:\n  listen: 127.0.0.1:%d\n  tls:\n    cert: %s\n    key: %s\n    ca: %s\n", s.natsPort, f.Cert, f.Key, f.CA)
	fmt.Fprintf(&b, "admin:\n  listen: 127.0.0.1:%d\n", s.adminPort)
	fmt.Fprintf(&b, "log:\n  level: debug\n")
	from := slices.Index(c.sites, s)
	if c.gossip {
		fmt.Fprintf(&b, "cluster:\n  bind: 127.0.0.1:%d\n  push_pull: 200ms\n", s.gossipPort)
		if c.hintRetention > 0 {
			fmt.Fprintf(&b, "  hint_retention: %s\n", c.hintRetention)
		}
		var join []string
		for _, p := range c.sites {
			if p != s {
				join = append(join, fmt.Sprintf("127.0.0.1:%d", p.gossipPort))
			}
		}
		if len(join) > 0 {
			fmt.Fprintf(&b, "  join: [%s]\n", strings.Join(join, ", "))
		}
		if c.links == nil {
			for _, l := range append(slices.Clone(c.extra), c.siteExtra[from]...) {
				b.WriteString(l + "\n")
			}
			return b.String()
		}
		// With links too: the peers list pins each peer's NATS address to
		// the link, over what gossip advertises.
	}
	b.WriteString("peers:\n")
	for to, p := range c.sites {
		if p == s {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", p.natsPort)
		if c.links != nil {
			addr = c.links[from][to].Addr()
		}
		fmt.Fprintf(&b, "  - name: %s\n    nats_url: tls://%s\n", p.name, addr)
	}
	for _, l := range append(slices.Clone(c.extra), c.siteExtra[from]...) {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// natsAs connects to site i's NATS as site `as` (its certificate, and its
// reply prefix): as site i itself it may do anything, as another site what a
// peer may (ship.PeerPermissions).
func (c *cluster) natsAs(i int, as string) *nats.Conn {
	c.t.Helper()
	nc, err := nats.Connect(c.natsURL(i), append(c.peerTLS(as), nats.Timeout(5*time.Second))...)
	if err != nil {
		c.t.Fatalf("connect to %s's NATS as %s: %v", c.sites[i].name, as, err)
	}
	c.t.Cleanup(nc.Close)
	return nc
}

// natsURL is site i's NATS URL.
func (c *cluster) natsURL(i int) string {
	return fmt.Sprintf("tls://127.0.0.1:%d", c.sites[i].natsPort)
}

// peerTLS returns the connection options of site as (see natsAs).
func (c *cluster) peerTLS(as string) []nats.Option {
	c.t.Helper()
	cfg, err := certs.ClientConfig(certs.For(c.certs, as))
	if err != nil {
		c.t.Fatal(err)
	}
	return ship.PeerOptions(cfg, casualdb.SiteID(as))
}

// start starts the sidecar of site i.
func (c *cluster) start(i int) {
	c.t.Helper()
	s := c.sites[i]
	cfgPath := filepath.Join(s.dir, "casualdb.yml")
	if err := os.WriteFile(cfgPath, []byte(c.config(s)), 0o600); err != nil {
		c.t.Fatal(err)
	}
	s.runs++
	logPath := filepath.Join(s.dir, fmt.Sprintf("sidecar-%d.log", s.runs))
	logf, err := os.Create(logPath)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(binary, "run", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func(done chan struct{}) {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}(s.done)
}

// waitHealthy waits until site i's /healthz answers ok.
func (c *cluster) waitHealthy(i int) {
	c.t.Helper()
	s := c.sites[i]
	pgtest.CheckFor(c.t, 60*time.Second, 50*time.Millisecond, func() error {
		select {
		case <-s.done:
			return fmt.Errorf("sidecar %s exited: %s", s.name, c.logTail(i, 20))
		default:
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", s.adminPort))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("healthz %s: %d", s.name, resp.StatusCode)
		}
		return nil
	})
}

// stop stops site i's sidecar gracefully (SIGTERM), killing it after 20s.
func (c *cluster) stop(i int) {
	s := c.sites[i]
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// kill kills site i's sidecar with SIGKILL.
func (c *cluster) kill(i int) {
	s := c.sites[i]
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func (c *cluster) logTail(i, n int) string {
	s := c.sites[i]
	b, _ := os.ReadFile(filepath.Join(s.dir, fmt.Sprintf("sidecar-%d.log", s.runs)))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// exec runs SQL at site i.
func (c *cluster) exec(i int, sql string, args ...any) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.sites[i].pg.Exec(ctx, sql, args...); err != nil {
		c.t.Fatalf("exec at %s: %v\n%s", c.sites[i].name, err, sql)
	}
}

// query returns the first column of the first row.
func (c *cluster) queryString(i int, sql string, args ...any) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.sites[i].pg.DSN())
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var out *string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&out); err != nil {
		return "", err
	}
	if out == nil {
		return "<null>", nil
	}
	return *out, nil
}

// checksum is a digest of every row of table at site i.
func (c *cluster) checksum(i int, table string) (string, error) {
	return c.queryString(i, fmt.Sprintf(`SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM %s t`, table))
}

// waitConverged waits until every site has the same checksum of every table.
func (c *cluster) waitConverged(timeout time.Duration, tables ...string) {
	c.t.Helper()
	pgtest.CheckFor(c.t, timeout, 100*time.Millisecond, func() error {
		for _, tbl := range tables {
			first, err := c.checksum(0, tbl)
			if err != nil {
				return err
			}
			for i := 1; i < len(c.sites); i++ {
				sum, err := c.checksum(i, tbl)
				if err != nil {
					return err
				}
				if sum != first {
					return fmt.Errorf("table %s: site %s has %s, site %s has %s", tbl, c.sites[0].name, first, c.sites[i].name, sum)
				}
			}
		}
		return nil
	})
}

// barrierSchema is the table c.barrier writes; add it to the schema of a
// cluster that uses barriers.
const barrierSchema = `CREATE TABLE barrier (site text PRIMARY KEY, n int NOT NULL);`

// barrier waits until every site has applied everything that every other
// site committed before the call. Each site writes a new round number into
// its row of table barrier (barrierSchema); a site that holds every site's
// round has applied everything before it, because apply takes each origin's
// transactions in commit order. It needs every link between the sites.
func (c *cluster) barrier(timeout time.Duration) {
	c.t.Helper()
	c.barriers++
	round := c.barriers
	for i, s := range c.sites {
		c.exec(i, `INSERT INTO barrier VALUES ($1, $2) ON CONFLICT (site) DO UPDATE SET n = excluded.n`, s.name, round)
	}
	want := fmt.Sprint(len(c.sites))
	pgtest.CheckFor(c.t, timeout, 50*time.Millisecond, func() error {
		for i, s := range c.sites {
			got, err := c.queryString(i, `SELECT count(*)::text FROM barrier WHERE n >= $1`, round)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("site %s holds round %d of %s sites, want all %s", s.name, round, got, want)
			}
		}
		return nil
	})
}

// raceFlag builds the sidecar with the race detector unless CASUALDB_NORACE is set.
func raceFlag() string {
	if os.Getenv("CASUALDB_NORACE") != "" {
		return "-v=false"
	}
	return "-race"
}
