package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/jackc/pgx/v5"
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
	name      string
	pg        *pgtest.Server
	natsPort  int
	adminPort int
	dir       string
	cmd       *exec.Cmd
	done      chan struct{}
	runs      int
}

type cluster struct {
	t     testing.TB
	sites []*site
	extra []string // extra config lines for every site
}

// newCluster starts n PostgreSQL servers with schema applied at each, and
// their sidecars.
func newCluster(t testing.TB, n int, schema string) *cluster {
	t.Helper()
	c := &cluster{t: t}
	names := []string{"a", "b", "c", "d", "e"}[:n]
	for _, name := range names {
		s := &site{name: name, pg: pgtest.NewServer(t, name), dir: t.TempDir()}
		var err error
		if s.natsPort, err = pgtest.FreePort(); err != nil {
			t.Fatal(err)
		}
		if s.adminPort, err = pgtest.FreePort(); err != nil {
			t.Fatal(err)
		}
		if schema != "" {
			if err := s.pg.Exec(context.Background(), schema); err != nil {
				t.Fatalf("schema at %s: %v", name, err)
			}
		}
		c.sites = append(c.sites, s)
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
			if t.Failed() {
				t.Logf("sidecar %s log tail:\n%s", c.sites[i].name, c.logTail(i, 40))
			}
		}
	})
	return c
}

func (c *cluster) config(s *site) string {
	var b strings.Builder
	fmt.Fprintf(&b, "site: %s\ndata_dir: %s\n", s.name, filepath.Join(s.dir, "data"))
	fmt.Fprintf(&b, "database:\n  dsn: %s\n", s.pg.DSN())
	fmt.Fprintf(&b, "nats:\n  listen: 127.0.0.1:%d\n", s.natsPort)
	fmt.Fprintf(&b, "admin:\n  listen: 127.0.0.1:%d\n", s.adminPort)
	fmt.Fprintf(&b, "log:\n  level: debug\n")
	b.WriteString("peers:\n")
	for _, p := range c.sites {
		if p != s {
			fmt.Fprintf(&b, "  - name: %s\n    nats_url: nats://127.0.0.1:%d\n", p.name, p.natsPort)
		}
	}
	for _, l := range c.extra {
		b.WriteString(l + "\n")
	}
	return b.String()
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

// raceFlag builds the sidecar with the race detector unless CASUALDB_NORACE is set.
func raceFlag() string {
	if os.Getenv("CASUALDB_NORACE") != "" {
		return "-v=false"
	}
	return "-race"
}
