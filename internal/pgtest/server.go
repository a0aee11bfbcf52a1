package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	// defaultBinDir holds the PostgreSQL 15 server binaries on Debian and Ubuntu.
	defaultBinDir = "/usr/lib/postgresql/15/bin"
	// binDirEnv overrides defaultBinDir.
	binDirEnv = "CASUALDB_PG_BIN"

	logFileName  = "postgres.log"
	confFileName = "casualdb.conf"

	readyTimeout = 30 * time.Second
	pollInterval = 50 * time.Millisecond
	// portRetries is how many times Start picks a new port when the one it
	// picked was taken before the postmaster could bind it.
	portRetries = 3
	// childrenGoneTimeout bounds how long Kill waits for the backends to die.
	childrenGoneTimeout = 5 * time.Second
)

// errPortInUse reports that the postmaster could not bind its port.
var errPortInUse = errors.New("port already in use")

// BinDir returns the directory holding initdb and postgres: $CASUALDB_PG_BIN
// when set, else /usr/lib/postgresql/15/bin.
func BinDir() string {
	if d := os.Getenv(binDirEnv); d != "" {
		return d
	}
	return defaultBinDir
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	// Below the kernel's ephemeral range, which outgoing connections draw
	// from: a port chosen there (":0") can be taken by any connection
	// between the check and its use. Each port is also reserved by a file
	// for the length of a test run, so that concurrent test processes
	// (packages run in parallel) do not both pick it.
	lo, hi := 20000, 32000
	if min, _, ok := ephemeralRange(); ok && min <= hi {
		hi = min - 1
	}
	dir := filepath.Join(os.TempDir(), "casualdb-test-ports")
	_ = os.MkdirAll(dir, 0o777)
	for range 200 {
		port := lo + rand.IntN(hi-lo+1)
		mark := filepath.Join(dir, strconv.Itoa(port))
		if fi, err := os.Stat(mark); err == nil && time.Since(fi.ModTime()) < portReservation {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		_ = os.Remove(mark) // a stale reservation
		f, err := os.OpenFile(mark, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
		if err != nil {
			continue // another process reserved it just now
		}
		f.Close()
		return port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// portReservation is how long FreePort keeps a port it handed out from
// other callers: longer than any test run.
const portReservation = time.Hour

// ephemeralRange reads the kernel's range of ports for outgoing connections.
func ephemeralRange() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	return lo, hi, err1 == nil && err2 == nil
}

// Options configures Start. Start copies it; later changes have no effect.
type Options struct {
	// Dir is the parent of the data directory; required. It is created if
	// missing. When running as root, Start adds search permission (o+x) to
	// Dir and its ancestors where the postgres user lacks it.
	Dir string
	// Name names the data directory (Dir/Name) and prefixes log lines.
	// It must be a single path element. Zero means "postgres".
	Name string
	// Port is the TCP port on 127.0.0.1. Zero picks a free port, and picks
	// again (up to 3 times) if another process takes it first.
	Port int
	// Fsync keeps fsync=on and a synced initdb. Zero (false) turns fsync off,
	// which survives Kill (a process crash) but not a machine crash.
	Fsync bool
	// Settings are extra postgresql.conf settings; they override the defaults.
	Settings map[string]string
	// Env is extra environment for initdb and postgres, as "KEY=value".
	Env []string
	// FakeTime offsets the wall clock of the postmaster and every process it
	// forks (now(), commit timestamps, the log) from the real one, through
	// libfaketime: a relative offset in FAKETIME syntax, e.g. "+1h", "-90"
	// (seconds) or "+2.5d". Only this server is affected; initdb and the
	// calling process keep the real clock, and so does the monotonic clock.
	// Zero means the real clock. Start fails with an error wrapping
	// ErrNoFakeTime when libfaketime is not installed.
	FakeTime string
	// Logf receives lifecycle messages. Nil discards them. It is called only
	// from the goroutine calling Start, Stop, Kill or Restart.
	Logf func(format string, args ...any)
}

// Server is a throwaway PostgreSQL 15 instance in its own data directory,
// listening on 127.0.0.1 and configured for logical replication. The
// superuser is postgres, authenticated by trust, and the database postgres
// exists. Its log is DataDir()/postgres.log.
type Server struct {
	opts    Options
	dataDir string
	logPath string
	port    int      // fixed once Start returns
	owner   *owner   // the postgres user when running as root; nil otherwise
	fakeEnv []string // added to the postmaster's environment for Options.FakeTime

	// mu serialises process changes; it is held while starting and
	// stopping, so Stop waits for a concurrent Restart to finish.
	mu   sync.Mutex
	proc *process // nil when not running
}

// process is one run of the postmaster.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd.Wait returns
}

// Start creates the data directory and runs initdb if it is new, starts
// postgres, and waits up to 30s until it accepts connections.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("start postgres: Options.Dir is required")
	}
	if opts.Name == "" {
		opts.Name = "postgres"
	}
	if opts.Name != filepath.Base(opts.Name) || opts.Name == "." || opts.Name == ".." {
		return nil, fmt.Errorf("start postgres: Options.Name %q is not a single path element", opts.Name)
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("start postgres %s: Options.Port %d out of range", opts.Name, opts.Port)
	}
	opts.Settings = maps.Clone(opts.Settings)
	opts.Env = slices.Clone(opts.Env)
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("start postgres %s: %w", opts.Name, err)
	}
	s := &Server{opts: opts, dataDir: filepath.Join(dir, opts.Name), port: opts.Port}
	s.logPath = filepath.Join(s.dataDir, logFileName)
	if os.Geteuid() == 0 {
		if s.owner, err = lookupOwner("postgres"); err != nil {
			return nil, fmt.Errorf("start postgres %s as root: %w", opts.Name, err)
		}
	}
	if opts.FakeTime != "" {
		if s.fakeEnv, err = fakeTimeEnv(opts.FakeTime, s.env()); err != nil {
			return nil, fmt.Errorf("start postgres %s: %w", opts.Name, err)
		}
	}
	if err := s.prepare(ctx); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		if opts.Port == 0 {
			if s.port, err = FreePort(); err != nil {
				return nil, fmt.Errorf("start postgres %s: %w", opts.Name, err)
			}
		}
		err = s.start(ctx)
		if err == nil {
			return s, nil
		}
		if opts.Port != 0 || attempt >= portRetries || !errors.Is(err, errPortInUse) {
			return nil, err
		}
		s.logf("port %d was taken, retrying with another", s.port)
	}
}

// DSN returns the URL of the postgres database as the postgres superuser.
func (s *Server) DSN() string { return s.DSNFor("postgres") }

// DSNFor returns the URL of database db as the postgres superuser.
func (s *Server) DSNFor(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, url.PathEscape(db))
}

// Port returns the TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// PID returns the postmaster's process id, or 0 when the server is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// DataDir returns the absolute path of the data directory.
func (s *Server) DataDir() string { return s.dataDir }

// Stop shuts the server down with a fast shutdown (SIGINT: roll back open
// transactions, checkpoint) and waits for it. If ctx ends first, it kills
// the server and returns ctx's error. Stopping a stopped server is a no-op.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil {
		return nil
	}
	s.logf("stopping")
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop postgres %s: %w", s.opts.Name, err)
	}
	select {
	case <-p.done:
		s.proc = nil
		return nil
	case <-ctx.Done():
		err := s.kill(p)
		s.proc = nil
		return errors.Join(fmt.Errorf("stop postgres %s: killed after %w", s.opts.Name, ctx.Err()), err)
	}
}

// Kill sends SIGKILL to the postmaster and its backends, as a crash would, and
// waits for them to exit. The data directory stays usable: Restart runs crash
// recovery. Killing a stopped server is a no-op.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil {
		return nil
	}
	s.logf("killing")
	err := s.kill(p)
	s.proc = nil
	return err
}

// Restart stops the server if it is running and starts it again on the same
// data directory and port.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Stop(ctx); err != nil {
		return err
	}
	return s.start(ctx)
}

// CreateDatabase creates database name.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	if err := s.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Exec runs sql with args on a new connection to the postgres database.
func (s *Server) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		return fmt.Errorf("connect to postgres %s: %w", s.opts.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("exec on postgres %s: %w", s.opts.Name, err)
	}
	return nil
}

// LogTail returns the last n lines of the server log, for failure messages.
func (s *Server) LogTail(n int) string {
	return lastLines(readTail(s.logPath, 0), n)
}

// start writes the configuration, starts the postmaster and waits until it
// accepts connections; on failure it leaves no process behind.
func (s *Server) start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		return fmt.Errorf("start postgres %s: already running", s.opts.Name)
	}
	if err := s.writeFile(filepath.Join(s.dataDir, confFileName), s.conf()); err != nil {
		return fmt.Errorf("start postgres %s: %w", s.opts.Name, err)
	}
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start postgres %s: %w", s.opts.Name, err)
	}
	defer logFile.Close() // the postmaster has its own descriptor once started
	if err := s.chown(s.logPath); err != nil {
		return fmt.Errorf("start postgres %s: %w", s.opts.Name, err)
	}
	logStart, err := logFile.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("start postgres %s: %w", s.opts.Name, err)
	}

	s.logf("starting on port %d in %s", s.port, s.dataDir)
	// postgres logs to stderr, which is the log file; logging_collector
	// stays off so that errors before it would start land there too.
	cmd := exec.Command(filepath.Join(BinDir(), "postgres"), "-D", s.dataDir)
	cmd.Dir = s.dataDir // postgres needs a readable working directory
	cmd.Env = append(s.env(), s.fakeEnv...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr(s.owner.credential())
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres %s: %w", s.opts.Name, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait() // the exit status is in the log
		close(p.done)
	}()
	if err := s.waitReady(ctx, p, logStart); err != nil {
		return errors.Join(err, s.kill(p))
	}
	s.proc = p
	return nil
}

// waitReady polls until the server accepts connections, the postmaster
// exits, ctx ends, or 30s pass.
func (s *Server) waitReady(ctx context.Context, p *process, logStart int64) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	// A ping to a port that someone else listens on can hang until its
	// timeout; stop it as soon as the postmaster exits.
	pingCtx, cancelPing := context.WithCancel(ctx)
	defer cancelPing()
	go func() {
		select {
		case <-p.done:
			cancelPing()
		case <-pingCtx.Done():
		}
	}()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		err := s.ping(pingCtx)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			out := readTail(s.logPath, logStart)
			if strings.Contains(out, "Address already in use") {
				return fmt.Errorf("start postgres %s on port %d: %w", s.opts.Name, s.port, errPortInUse)
			}
			return fmt.Errorf("start postgres %s: postmaster exited (%v); log:\n%s",
				s.opts.Name, p.cmd.ProcessState, lastLines(out, 20))
		case <-ctx.Done():
			return fmt.Errorf("start postgres %s: not ready on port %d: %w (last attempt: %w); log:\n%s",
				s.opts.Name, s.port, ctx.Err(), err, lastLines(readTail(s.logPath, logStart), 20))
		case <-tick.C:
		}
	}
}

// ping connects and checks that the server on the port is this one, not
// another that took the port first.
func (s *Server) ping(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(s.DSN())
	if err != nil {
		return err
	}
	cfg.ConnectTimeout = time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var dir string
	if err := conn.QueryRow(ctx, "SHOW data_directory").Scan(&dir); err != nil {
		return err
	}
	if dir != s.dataDir {
		return fmt.Errorf("port %d is served by the server in %s", s.port, dir)
	}
	return nil
}

// kill sends SIGKILL to the postmaster and its children, as a machine crash
// would, and waits until they are gone, so that a restart does not find the
// old shared memory still attached. Every child calls setsid, so a signal to
// the postmaster's process group does not reach them; kill freezes the
// postmaster first so that it cannot fork while its children are listed.
func (s *Server) kill(p *process) error {
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	waitFor(time.Second, func() bool { return stopped(pid) })
	kids := children(pid)
	// The group catches a child that has not yet called setsid.
	err := syscall.Kill(-pid, syscall.SIGKILL)
	for _, c := range kids {
		_ = syscall.Kill(-c, syscall.SIGKILL) // c and what it runs, e.g. archive_command
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	<-p.done
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill postgres %s: %w", s.opts.Name, err)
	}
	waitFor(childrenGoneTimeout, func() bool { return !slices.ContainsFunc(kids, alive) })
	return nil
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) {
	deadline := time.Now().Add(timeout)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// env returns the environment for initdb and postgres: ours without PG*
// variables, which would change the defaults, plus Options.Env.
func (s *Server) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || (s.owner != nil && strings.HasPrefix(kv, "HOME=")) {
			continue
		}
		env = append(env, kv)
	}
	if s.owner != nil {
		env = append(env, "HOME="+s.owner.home)
	}
	return append(env, s.opts.Env...)
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf("pgtest %s: "+format, append([]any{s.opts.Name}, args...)...)
	}
}

// readTail returns the file's contents from offset from, at most its last
// 1 MiB. It returns "" if the file cannot be read.
func readTail(path string, from int64) string {
	const limit = 1 << 20
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	from = max(from, fi.Size()-limit)
	b, _ := io.ReadAll(io.NewSectionReader(f, from, fi.Size()-from))
	return string(b)
}

// lastLines returns the last n lines of text.
func lastLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if n >= 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
