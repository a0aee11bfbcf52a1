package ship

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats-server/v2/server"
)

// fakeClient is a client connection as the server shows it to peerAuth
// (the decision is pure logic; node.TestNode_TLS runs it in a real server).
type fakeClient struct {
	tls  *tls.ConnectionState
	addr net.Addr
	kind int
	user *server.User
}

func (c *fakeClient) GetOpts() *server.ClientOpts                 { return &server.ClientOpts{} }
func (c *fakeClient) GetTLSConnectionState() *tls.ConnectionState { return c.tls }
func (c *fakeClient) RegisterUser(u *server.User)                 { c.user = u }
func (c *fakeClient) RemoteAddress() net.Addr                     { return c.addr }
func (c *fakeClient) GetNonce() []byte                            { return nil }
func (c *fakeClient) Kind() int                                   { return c.kind }
func (c *fakeClient) GetID() uint64                               { return 1 }

func named(cn string) *tls.ConnectionState {
	return &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{{Subject: pkix.Name{CommonName: cn}}}}}
}

// TestPeerAuth: the in-process connection and the site's own certificate
// may do anything; a peer's certificate gets that peer's permissions; no
// verified certificate, or a common name that is no site name, is refused
// and counted.
func TestPeerAuth(t *testing.T) {
	tcp := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 40000}
	pipe, _ := net.Pipe()
	defer pipe.Close()
	a := &peerAuth{site: "a", log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, tt := range []struct {
		name  string
		c     *fakeClient
		ok    bool
		user  string
		perms bool
	}{
		{"in process", &fakeClient{addr: pipe.RemoteAddr(), kind: server.CLIENT}, true, "local", false},
		{"own certificate", &fakeClient{tls: named("a"), addr: tcp, kind: server.CLIENT}, true, "site:a", false},
		{"peer", &fakeClient{tls: named("b"), addr: tcp, kind: server.CLIENT}, true, "site:b", true},
		{"no tls", &fakeClient{addr: tcp, kind: server.CLIENT}, false, "", false},
		{"unverified", &fakeClient{tls: &tls.ConnectionState{}, addr: tcp, kind: server.CLIENT}, false, "", false},
		{"not a site name", &fakeClient{tls: named("Bad Name"), addr: tcp, kind: server.CLIENT}, false, "", false},
		{"a route", &fakeClient{tls: named("b"), addr: tcp, kind: server.ROUTER}, false, "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := a.refused.Load()
			if ok := a.Check(tt.c); ok != tt.ok {
				t.Fatalf("Check = %v, want %v", ok, tt.ok)
			}
			if !tt.ok {
				if tt.c.user != nil || a.refused.Load() != before+1 {
					t.Errorf("refused, yet user %+v registered or not counted (%d -> %d)", tt.c.user, before, a.refused.Load())
				}
				return
			}
			if tt.c.user == nil || tt.c.user.Username != tt.user || (tt.c.user.Permissions != nil) != tt.perms {
				t.Fatalf("user %+v, want %s with permissions %v", tt.c.user, tt.user, tt.perms)
			}
		})
	}
}

// TestPeerPermissions: what b may do at a, and nothing of another site's.
func TestPeerPermissions(t *testing.T) {
	p := PeerPermissions("a", "b")
	pub := p.Publish.Allow
	for _, want := range []string{"casualdb.in.a.b", "casualdb.in.a.*.b", "casualdb.resend.a.b", "casualdb.check.a"} {
		if !slices.Contains(pub, want) {
			t.Errorf("b may not publish %s at a: %v", want, pub)
		}
	}
	for _, s := range pub {
		if s == "casualdb.in.a.c" || s == "casualdb.in.a.>" || strings.HasPrefix(s, "casualdb.resend.a.c") || s == "casualdb.resend.a" || s == "casualdb.resend.a.*" || s == ">" || s[0] == '$' {
			t.Errorf("b may publish %s at a", s)
		}
	}
	if got := p.Subscribe.Allow; !slices.Equal(got, []string{"_INBOX_b.>"}) {
		t.Errorf("b may subscribe to %v at a, want only its replies", got)
	}
	if !slices.Equal(p.Publish.Deny, []string{"casualdb.in.a.a.>"}) {
		t.Errorf("b may relay a's own transactions to a: deny %v", p.Publish.Deny)
	}
	if RelaySubject("a", "c", "b") != "casualdb.in.a.c.b" {
		t.Errorf("RelaySubject = %s", RelaySubject("a", "c", "b"))
	}
}

// TestSafeReply: a sidecar answers requests only on a reply inbox, never on
// a subject that would act (the JetStream API, an inbox stream).
func TestSafeReply(t *testing.T) {
	for reply, want := range map[string]bool{
		"_INBOX.abc.1": true, "_INBOX_b.abc.1": true,
		"": false, "_INBOX.": false, "_INBOX_b": false, "_INBOX_Bad Name.x": false,
		"$JS.API.STREAM.PURGE.CASUALDB_OUT_a": false, "casualdb.in.a.b": false, "_INBOXX.a": false,
	} {
		if got := SafeReply(reply); got != want {
			t.Errorf("SafeReply(%q) = %v, want %v", reply, got, want)
		}
	}
}

func TestResendAsker(t *testing.T) {
	for subj, want := range map[string]casualdb.SiteID{
		ResendSubject("a", "b"): "b",
		"casualdb.resend.a":     "",
		"casualdb.check.a":      "",
		"casualdb.resend.a.b.c": "b.c",
	} {
		if got := ResendAsker(subj); got != want {
			t.Errorf("ResendAsker(%s) = %q, want %q", subj, got, want)
		}
	}
}
