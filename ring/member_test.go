package ring

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// startMember starts site's gossip on a free loopback port, joining join.
func startMember(t *testing.T, site casualdb.SiteID, key []byte, state func() []byte, join ...string) *Membership {
	t.Helper()
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Join(MemberConfig{
		Site: site, Bind: fmt.Sprintf("127.0.0.1:%d", port), Join: join, SecretKey: key, Local: true,
		Meta: NodeMeta{NATSURL: "nats://127.0.0.1:4" + string(site)}, State: state, PushPull: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func (m *Membership) addr() string { return m.cfg.Advertise }

// crash stops m's gossip without leaving: to the others it just goes quiet.
func (m *Membership) crash() {
	m.closeOnce.Do(func() {
		m.cancel()
		m.wg.Wait()
		m.closeErr = m.list.Shutdown()
	})
}

func states(m *Membership) string {
	var b strings.Builder
	for _, mb := range m.Members() {
		fmt.Fprintf(&b, "%s=%s ", mb.Site, mb.State)
	}
	return strings.TrimSpace(b.String())
}

func TestJoin_ConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  MemberConfig
		want error
	}{
		{"no site", MemberConfig{Bind: "127.0.0.1:1"}, casualdb.ErrConfig},
		{"bad port", MemberConfig{Site: "a", Bind: "127.0.0.1:x"}, casualdb.ErrConfig},
		{"wildcard advertise", MemberConfig{Site: "a", Bind: "0.0.0.0:7946", SecretKey: testKey}, casualdb.ErrConfig},
		{"no key off loopback", MemberConfig{Site: "a", Bind: "10.1.2.3:7946"}, ErrInsecureGossip},
		{"short key", MemberConfig{Site: "a", Bind: "127.0.0.1:7946", SecretKey: []byte("short")}, casualdb.ErrConfig},
		{"meta too large", MemberConfig{Site: "a", Bind: "127.0.0.1:7946", Meta: NodeMeta{NATSURL: strings.Repeat("x", 600)}}, casualdb.ErrConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Join(tc.cfg)
			if err == nil {
				m.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("Join(%+v) = %v, want %v", tc.cfg, err, tc.want)
			}
		})
	}
}

// TestMembership_JoinLearnFail starts a, then b and c naming only a (c
// before b has joined), and checks that every site learns every other with
// its metadata and state digest, that a site that leaves is seen as left,
// and one that stops answering as dead.
func TestMembership_JoinLearnFail(t *testing.T) {
	var progress atomic.Int64
	a := startMember(t, "a", testKey, nil)
	b := startMember(t, "b", testKey, func() []byte { return []byte(fmt.Sprintf(`{"applied":%d}`, progress.Load())) }, a.addr())
	c := startMember(t, "c", testKey, nil, a.addr())
	pgtest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for _, m := range []*Membership{a, b, c} {
			if got := states(m); got != "a=alive b=alive c=alive" {
				return fmt.Errorf("site %s sees %q", m.cfg.Site, got)
			}
		}
		return nil
	})
	for _, mb := range c.Members() {
		if want := "nats://127.0.0.1:4" + string(mb.Site); mb.Meta.NATSURL != want {
			t.Errorf("c sees %s's nats url %q, want %q", mb.Site, mb.Meta.NATSURL, want)
		}
	}
	progress.Store(42)
	pgtest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if got := string(a.RemoteState("b")); got != `{"applied":42}` {
			return fmt.Errorf("a holds b's state %q", got)
		}
		return nil
	})

	if err := c.Close(); err != nil {
		t.Fatalf("close c: %v", err)
	}
	pgtest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if got := states(a); got != "a=alive b=alive c=left" {
			return fmt.Errorf("after c left, a sees %q", got)
		}
		return nil
	})
	if a.Alive("c") || !a.Alive("b") {
		t.Errorf("Alive: c %v, b %v; want false, true", a.Alive("c"), a.Alive("b"))
	}
	// b stops without a word (its gossip just ends): a declares it dead.
	b.crash()
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if got := states(a); got != "a=alive b=dead c=left" {
			return fmt.Errorf("after b failed, a sees %q", got)
		}
		return nil
	})
}

// TestMembership_WrongKeyCannotJoin: a site with another key never gets in.
func TestMembership_WrongKeyCannotJoin(t *testing.T) {
	a := startMember(t, "a", testKey, nil)
	x := startMember(t, "x", []byte("another key of thirty-two bytes!"), nil, a.addr())
	startMember(t, "b", testKey, nil, a.addr())
	pgtest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if got := states(a); got != "a=alive b=alive" {
			return fmt.Errorf("a sees %q", got)
		}
		return nil
	})
	// x keeps trying to join with back-off; after a few failed tries it
	// still is not in.
	pgtest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := x.joinAttempts.Load(); n < 3 {
			return fmt.Errorf("x tried to join %d times", n)
		}
		return nil
	})
	if got := states(a); strings.Contains(got, "x=") {
		t.Errorf("a sees %q: the site with the wrong key got in", got)
	}
	if got := states(x); got != "x=alive" {
		t.Errorf("x sees %q, want only itself", got)
	}
}
