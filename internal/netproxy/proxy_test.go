package netproxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ioTimeout bounds every read and write of a test, so that a bug fails the
// test instead of hanging it; nothing waits for it to pass.
const ioTimeout = 10 * time.Second

// echoServer echoes every connection and counts what it received.
type echoServer struct {
	ln       net.Listener
	wg       sync.WaitGroup
	open     atomic.Int64
	received atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// newEcho starts an echo server on a free loopback port, stopped when the
// test ends.
func newEcho(t *testing.T) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{ln: ln, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.conns[c] = struct{}{}
			e.mu.Unlock()
			e.open.Add(1)
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer e.open.Add(-1)
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					e.received.Add(int64(n))
					if n > 0 {
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		e.mu.Lock()
		for c := range e.conns {
			c.Close()
		}
		e.mu.Unlock()
		e.wg.Wait()
	})
	return e
}

func (e *echoServer) addr() string { return e.ln.Addr().String() }

// newProxy starts a proxy to target, closed when the test ends.
func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := Start(Config{Target: target, Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// dial connects to the proxy; the connection is closed when the test ends.
func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	return c
}

// roundTrip sends msg and reads back its echo.
func roundTrip(c net.Conn, msg []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs from what was sent")
	}
	return nil
}

// checkBroken asserts that c fails: the proxy reset or closed it.
func checkBroken(t *testing.T, c net.Conn) {
	t.Helper()
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read on a cut connection: %v, want EOF or reset", err)
	}
}

// checkRefused asserts that a new connection to p fails, at connect or at
// the first read: the reset can come before connect returns.
func checkRefused(t *testing.T, p *Proxy) {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), ioTimeout)
	if err != nil {
		return
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("lost")) // may fail already
	checkBroken(t, c)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestStart_BadConfig(t *testing.T) {
	if _, err := Start(Config{}); err == nil {
		t.Error("Start without a target succeeded")
	}
	if _, err := Start(Config{Target: "127.0.0.1:1", Listen: "256.0.0.1:0"}); err == nil {
		t.Error("Start on a bad listen address succeeded")
	}
}

func TestProxy_Forwards(t *testing.T) {
	e := newEcho(t)
	p := newProxy(t, e.addr())
	if p.State() != Up || p.Target() != e.addr() {
		t.Fatalf("new proxy: state %v target %s, want up and %s", p.State(), p.Target(), e.addr())
	}
	big := make([]byte, 1<<20)
	rand.Read(big)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		c := dial(t, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := roundTrip(c, big); err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := p.Conns(); got != 4 {
		t.Errorf("Conns() = %d, want 4", got)
	}
	if got := p.Accepted(); got != 4 {
		t.Errorf("Accepted() = %d, want 4", got)
	}
}

func TestProxy_CutHeal(t *testing.T) {
	e := newEcho(t)
	p := newProxy(t, e.addr())
	before := dial(t, p)
	if err := roundTrip(before, []byte("before")); err != nil {
		t.Fatal(err)
	}

	p.Cut()
	if p.State() != Cut {
		t.Fatalf("State() = %v after Cut, want cut", p.State())
	}
	t.Run("drops open connections", func(t *testing.T) {
		checkBroken(t, before)
		if got := p.Conns(); got != 0 {
			t.Errorf("Conns() = %d after Cut, want 0", got)
		}
		// The server's end is dropped too.
		pgtest.CheckFor(t, ioTimeout, 5*time.Millisecond, func() error {
			if n := e.open.Load(); n != 0 {
				return fmt.Errorf("echo server still has %d connections", n)
			}
			return nil
		})
	})
	t.Run("refuses new connections", func(t *testing.T) {
		received := e.received.Load()
		checkRefused(t, p)
		if got := e.received.Load(); got != received {
			t.Errorf("echo server received %d bytes through a cut link", got-received)
		}
		if p.Reset() < 2 {
			t.Errorf("Reset() = %d, want at least 2 (one open, one new)", p.Reset())
		}
	})

	p.Heal()
	t.Run("heal restores", func(t *testing.T) {
		if p.State() != Up {
			t.Fatalf("State() = %v after Heal, want up", p.State())
		}
		if err := roundTrip(dial(t, p), []byte("after")); err != nil {
			t.Fatal(err)
		}
	})
}

func TestProxy_HoldHeal(t *testing.T) {
	e := newEcho(t)
	p := newProxy(t, e.addr())
	open := dial(t, p)
	if err := roundTrip(open, []byte("warm")); err != nil {
		t.Fatal(err)
	}
	received := e.received.Load()

	p.Hold()
	if _, err := open.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	fresh := dial(t, p)
	if _, err := fresh.Write([]byte("new")); err != nil {
		t.Fatal(err)
	}
	pgtest.CheckFor(t, ioTimeout, 5*time.Millisecond, func() error {
		if n := p.Conns(); n != 2 {
			return fmt.Errorf("Conns() = %d while held, want 2", n)
		}
		return nil
	})
	// Nothing reaches the server, while the same server answers at once
	// through another link, however often we look.
	other := dial(t, newProxy(t, e.addr()))
	for i := range 5 {
		if err := roundTrip(other, []byte("ctrl")); err != nil {
			t.Fatal(err)
		}
		if got, want := e.received.Load()-received, int64(4*(i+1)); got != want {
			t.Fatalf("echo server received %d bytes, want %d: the held link delivered", got, want)
		}
	}
	if n := p.Conns(); n != 2 {
		t.Errorf("Conns() = %d while held, want 2", n)
	}

	p.Heal()
	for _, tc := range []struct {
		c    net.Conn
		want string
	}{{open, "held"}, {fresh, "new"}} {
		got := make([]byte, len(tc.want))
		if _, err := io.ReadFull(tc.c, got); err != nil || string(got) != tc.want {
			t.Errorf("after Heal read %q, %v; want %q", got, err, tc.want)
		}
	}
}

func TestProxy_HoldThenCut(t *testing.T) {
	e := newEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p)
	if err := roundTrip(c, []byte("warm")); err != nil {
		t.Fatal(err)
	}
	received := e.received.Load()
	p.Hold()
	if _, err := c.Write([]byte("dropped")); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	checkBroken(t, c)
	p.Heal()
	if err := roundTrip(dial(t, p), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if got := e.received.Load() - received; got != 1 {
		t.Errorf("echo server received %d bytes after the hold, want 1 (held bytes are lost at Cut)", got)
	}
}

func TestProxy_TargetDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p, err := Start(Config{Target: addr, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	checkRefused(t, p)
}

func TestProxy_Close(t *testing.T) {
	e := newEcho(t)
	p, err := Start(Config{Target: e.addr()})
	if err != nil {
		t.Fatal(err)
	}
	up := dial(t, p)
	if err := roundTrip(up, []byte("x")); err != nil {
		t.Fatal(err)
	}
	p.Hold()
	held := dial(t, p)
	if _, err := held.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	// Close interrupts the held connection's wait and every read; goleak
	// checks that nothing is left behind.
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	checkBroken(t, up)
	checkBroken(t, held)
	if _, err := net.DialTimeout("tcp", p.Addr(), ioTimeout); err == nil {
		t.Error("dial after Close succeeded")
	}
	p.Heal() // no effect, no panic
	if p.Conns() != 0 {
		t.Errorf("Conns() = %d after Close, want 0", p.Conns())
	}
}

func TestProxy_HoldDeliversAfterClientCloses(t *testing.T) {
	e := newEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p)
	if err := roundTrip(c, []byte("warm")); err != nil {
		t.Fatal(err)
	}
	received := e.received.Load()
	p.Hold()
	if _, err := c.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	c.Close() // gives up, as a client whose request timed out would
	p.Heal()
	// What it sent before closing arrives, and then the connection ends.
	pgtest.CheckFor(t, ioTimeout, 5*time.Millisecond, func() error {
		if got := e.received.Load() - received; got != 4 {
			return fmt.Errorf("echo server received %d bytes after Heal, want 4", got)
		}
		if n := e.open.Load(); n != 0 {
			return fmt.Errorf("echo server still has %d connections", n)
		}
		return nil
	})
}
