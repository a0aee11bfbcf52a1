package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

// orphanEnv makes the test binary start a server in the named directory,
// print the postmaster's PID and exit without stopping it.
const orphanEnv = "PGTEST_ORPHAN_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(orphanEnv); dir != "" {
		s, err := Start(context.Background(), Options{Dir: dir, Name: "orphan"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(strings.Trim(fmt.Sprint(serverPIDs(s)), "[]"))
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// serverPIDs returns the postmaster's PID and its children's.
func serverPIDs(s *Server) []int {
	pid := s.proc.cmd.Process.Pid
	return append([]int{pid}, children(pid)...)
}

// checkGone fails the test if any of pids is still running.
func checkGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d is still running", pid)
		}
	}
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestServer_Start(t *testing.T) {
	t.Parallel()
	s := NewServer(t, "start")
	conn := Connect(t, s.DSN())

	t.Run("settings", func(t *testing.T) {
		for sql, want := range map[string]string{
			"SHOW wal_level":               "logical",
			"SHOW max_replication_slots":   "10",
			"SHOW max_wal_senders":         "10",
			"SHOW max_connections":         "100",
			"SHOW fsync":                   "off",
			"SHOW synchronous_commit":      "on",
			"SHOW track_commit_timestamp":  "off",
			"SHOW wal_sender_timeout":      "1min",
			"SHOW shared_buffers":          "64MB",
			"SHOW listen_addresses":        "127.0.0.1",
			"SHOW unix_socket_directories": "",
			"SHOW port":                    strconv.Itoa(s.Port()),
			"SHOW data_directory":          s.DataDir(),
			"SELECT current_user":          "postgres",
		} {
			if got := queryString(t, conn, sql); got != want {
				t.Errorf("%s = %q, want %q", sql, got, want)
			}
		}
	})

	t.Run("replication connection", func(t *testing.T) {
		cfg, err := pgx.ParseConfig(s.DSN())
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["replication"] = "database"
		rconn, err := pgx.ConnectConfig(context.Background(), cfg)
		if err != nil {
			t.Fatalf("replication connect: %v", err)
		}
		defer rconn.Close(context.Background())
		if err := rconn.PgConn().Exec(context.Background(), "IDENTIFY_SYSTEM").Close(); err != nil {
			t.Fatalf("IDENTIFY_SYSTEM: %v", err)
		}
	})

	t.Run("log in data dir", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(s.DataDir(), logFileName))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "database system is ready to accept connections") {
			t.Errorf("log lacks the ready message:\n%s", b)
		}
		if tail := s.LogTail(1); strings.Contains(tail, "\n") || tail == "" {
			t.Errorf("LogTail(1) = %q, want one line", tail)
		}
	})

	t.Run("runs as postgres when root", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("not root")
		}
		pid := s.proc.cmd.Process.Pid
		status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			t.Fatal(err)
		}
		want := "Uid:\t" + strconv.Itoa(s.owner.uid) + "\t"
		if !strings.Contains(string(status), want) {
			t.Errorf("postmaster status lacks %q:\n%s", want, status)
		}
	})

	t.Run("create database", func(t *testing.T) {
		ctx := context.Background()
		if err := s.CreateDatabase(ctx, "site-a"); err != nil {
			t.Fatal(err)
		}
		c := Connect(t, s.DSNFor("site-a"))
		if got := queryString(t, c, "SELECT current_database()"); got != "site-a" {
			t.Errorf("current_database() = %q, want %q", got, "site-a")
		}
		if err := s.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		if err := s.Exec(ctx, "INSERT INTO t VALUES ($1)", 7); err != nil {
			t.Fatal(err)
		}
		if err := s.Exec(ctx, "SELECT * FROM missing"); err == nil {
			t.Error("Exec on a missing table succeeded")
		}
	})
}

func TestServer_KillRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := NewServer(t, "crash")
	if err := s.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pids := serverPIDs(s)
	if len(pids) < 5 {
		t.Errorf("postmaster and children = %v, want at least 5 processes", pids)
	}

	start := time.Now()
	if err := s.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	t.Logf("Kill took %v", time.Since(start))
	checkGone(t, pids)
	if err := conn.Ping(ctx); err == nil {
		t.Error("connection survived Kill")
	}
	if err := s.Kill(); err != nil {
		t.Errorf("second Kill: %v", err)
	}

	port := s.Port()
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if s.Port() != port {
		t.Errorf("port after Restart = %d, want %d", s.Port(), port)
	}
	c := Connect(t, s.DSN())
	if got := queryString(t, c, "SELECT count(*)::text FROM t"); got != "1" {
		t.Errorf("rows after crash = %s, want 1", got)
	}
	if got := queryString(t, c, "SHOW wal_level"); got != "logical" {
		t.Errorf("wal_level after restart = %q, want logical", got)
	}
	if !strings.Contains(s.LogTail(50), "not properly shut down") {
		t.Errorf("log does not show crash recovery:\n%s", s.LogTail(50))
	}
}

func TestServer_Stop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Start(ctx, Options{Dir: dir, Name: "stop", Fsync: true, Settings: map[string]string{"work_mem": "8MB"}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop(ctx)
	if err := s.Exec(ctx, "CREATE TABLE kept (id int)"); err != nil {
		t.Fatal(err)
	}
	pids := serverPIDs(s)

	t.Run("twice", func(t *testing.T) {
		for i := range 2 {
			if err := s.Stop(ctx); err != nil {
				t.Fatalf("Stop %d: %v", i, err)
			}
		}
		checkGone(t, pids)
		if _, err := os.Stat(filepath.Join(s.DataDir(), "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("postmaster.pid after Stop: %v", err)
		}
		if err := s.Exec(ctx, "SELECT 1"); err == nil {
			t.Error("Exec succeeded on a stopped server")
		}
	})

	t.Run("restart", func(t *testing.T) {
		if err := s.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		c := Connect(t, s.DSN())
		for sql, want := range map[string]string{"SHOW fsync": "on", "SHOW work_mem": "8MB"} {
			if got := queryString(t, c, sql); got != want {
				t.Errorf("%s = %q, want %q", sql, got, want)
			}
		}
		if err := s.Exec(ctx, "SELECT * FROM kept"); err != nil {
			t.Error(err)
		}
	})

	t.Run("ctx expires", func(t *testing.T) {
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		pids := serverPIDs(s)
		if err := s.Stop(cancelled); !errors.Is(err, context.Canceled) {
			t.Errorf("Stop with a cancelled ctx: %v, want context.Canceled", err)
		}
		checkGone(t, pids)
		if err := s.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("start existing dir", func(t *testing.T) {
		if err := s.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		s2, err := Start(ctx, Options{Dir: dir, Name: "stop"})
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Stop(ctx)
		if err := s2.Exec(ctx, "SELECT * FROM kept"); err != nil {
			t.Errorf("table lost on reusing the data dir: %v", err)
		}
	})
}

func TestServer_DiesWithParent(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), orphanEnv+"="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("child output %q: %v", out, err)
		}
		pids = append(pids, pid)
	}
	if len(pids) < 5 {
		t.Fatalf("child reported processes %v, want the postmaster and at least 4 children", pids)
	}
	CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for _, pid := range pids {
			if alive(pid) {
				return fmt.Errorf("process %d of %v still running", pid, pids)
			}
		}
		return nil
	})
}

func TestStart_PortTaken(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	s, err := Start(context.Background(), Options{Dir: t.TempDir(), Name: "taken", Port: port})
	if err == nil {
		s.Stop(context.Background())
		t.Fatal("Start succeeded on a taken port")
	}
	if !errors.Is(err, errPortInUse) {
		t.Errorf("Start on a taken port: %v, want errPortInUse", err)
	}
}

func TestStart_BadOptions(t *testing.T) {
	for _, opts := range []Options{{}, {Dir: t.TempDir(), Name: "a/b"}, {Dir: t.TempDir(), Port: -1}} {
		if _, err := Start(context.Background(), opts); err == nil {
			t.Errorf("Start(%+v) succeeded", opts)
		}
	}
}

func TestNATS(t *testing.T) {
	t.Parallel()
	n := NewNATS(t)
	nc, err := nats.Connect(n.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := js.AccountInfo(ctx)
	if err != nil {
		t.Fatalf("JetStream account info: %v", err)
	}
	if info.Tier.Limits.MaxStreams == 0 {
		t.Errorf("account info %+v shows no stream limit", info)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TX", Subjects: []string{"tx.>"}}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, "tx.a", []byte("x")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	nc.Close()
	n.Shutdown()
	n.Shutdown()
}

func TestCheckFor(t *testing.T) {
	calls := 0
	CheckFor(t, time.Second, time.Millisecond, func() error {
		if calls++; calls < 3 {
			return syscall.EAGAIN
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("calls = %d, want 3", calls)
	}
}
