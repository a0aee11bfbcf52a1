package pgtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NewServer starts a PostgreSQL server in a t.TempDir and stops it when the
// test ends, logging the tail of its log if the test failed. It fails the
// test, rather than skipping it, when the PostgreSQL 15 binaries are missing.
func NewServer(t testing.TB, name string) *Server {
	t.Helper()
	return NewServerWith(t, Options{Name: name})
}

// NewServerWith is NewServer with options: a zero Dir means a t.TempDir, a
// nil Logf means t.Logf. It fails the test, rather than skipping it, when the
// PostgreSQL 15 binaries are missing, or libfaketime when opts.FakeTime is
// set.
func NewServerWith(t testing.TB, opts Options) *Server {
	t.Helper()
	for _, bin := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(BinDir(), bin)); err != nil {
			t.Fatalf("PostgreSQL 15 binaries not found (set %s): %v", binDirEnv, err)
		}
	}
	if opts.FakeTime != "" {
		if _, err := FakeTimeLib(); err != nil {
			t.Fatalf("postgres %s needs a fake clock (%s): %v", opts.Name, opts.FakeTime, err)
		}
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("start postgres %s: %v", opts.Name, err)
	}
	name := s.opts.Name
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postgres %s log tail:\n%s", name, s.LogTail(30))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("stop postgres %s: %v\n%s", name, err, s.LogTail(20))
		}
	})
	return s
}

// NewNATS starts an embedded NATS server with JetStream storing in a
// t.TempDir and shuts it down when the test ends.
func NewNATS(t testing.TB) *NATS {
	t.Helper()
	n, err := StartNATS(t.TempDir())
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(n.Shutdown)
	return n
}

// Connect opens a connection that is closed when the test ends.
func Connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to %s: %v", dsn, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(ctx)
	})
	return conn
}

// CheckFor calls f every interval until it returns nil, and fails the test
// with f's last error if that has not happened after total. f runs at least
// once.
func CheckFor(t testing.TB, total, interval time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %v: %v", total, err)
		}
		time.Sleep(interval)
	}
}

// ExecAll runs each statement on conn, failing the test on the first error.
func ExecAll(t testing.TB, conn *pgx.Conn, sqls ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%v\n%s", err, sql)
		}
	}
}

// Plan returns the plan PostgreSQL shows for sql (EXPLAIN's lines joined).
func Plan(t testing.TB, conn *pgx.Conn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := conn.Query(ctx, "EXPLAIN "+sql)
	if err != nil {
		t.Fatalf("explain: %v\n%s", err, sql)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("explain: %v\n%s", err, sql)
	}
	return strings.Join(lines, "\n")
}

// SetParams sets each parameter for conn's session.
func SetParams(t testing.TB, conn *pgx.Conn, params map[string]string) {
	t.Helper()
	for k, v := range params {
		ExecAll(t, conn, "SET "+pgx.Identifier{k}.Sanitize()+" = '"+strings.ReplaceAll(v, "'", "''")+"'")
	}
}

// JetStream connects to the NATS server at url with opts (a server's
// in-process option, say), closed when the test ends, and returns its
// JetStream API.
func JetStream(t testing.TB, url string, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// Run runs a component (its Run method) in a goroutine until the returned
// stop is called; stop cancels it, waits for it to return and fails the
// test with its error, if any.
func Run(t testing.TB, ctx context.Context, what string, run func(context.Context) error) (stop func()) {
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(runCtx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
}
