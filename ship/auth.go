package ship

import (
	"crypto/tls"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// RelaySubject is the subject on which relayer hands site the transactions
// of origin it kept as hints (hinted hand-off): apart from origin's own
// subject (InboxSubject), so that the embedded server's permissions can pin
// each peer to subjects that name it.
func RelaySubject(site, origin, relayer casualdb.SiteID) string {
	return InboxSubject(site, origin) + "." + string(relayer)
}

// CheckSubject is where a site's sidecar answers check requests.
func CheckSubject(site casualdb.SiteID) string { return "casualdb.check." + string(site) }

// PeerInboxPrefix is the prefix of the reply subjects of site's connections
// to its peers' servers; a peer may subscribe to nothing else there.
func PeerInboxPrefix(site casualdb.SiteID) string { return "_INBOX_" + string(site) }

// SafeReply tells whether a request's reply subject is one a sidecar may
// answer on: a client's reply inbox (_INBOX. or a site's _INBOX_<site>.),
// never another subject. The answer goes out on the sidecar's own,
// unrestricted connection, and a reply subject such as
// $JS.API.STREAM.PURGE.<stream> would make it act for the requester.
func SafeReply(reply string) bool {
	if rest, ok := strings.CutPrefix(reply, "_INBOX."); ok {
		return rest != ""
	}
	rest, ok := strings.CutPrefix(reply, "_INBOX_")
	if !ok {
		return false
	}
	site, tail, ok := strings.Cut(rest, ".")
	return ok && tail != "" && casualdb.SiteID(site).Valid()
}

// PeerOptions returns the options of site's connections to a peer's server:
// TLS with the site's certificate (cfg; none for plain text) and replies
// under the site's own prefix.
func PeerOptions(cfg *tls.Config, site casualdb.SiteID) []nats.Option {
	return append(Secure(cfg), nats.CustomInboxPrefix(PeerInboxPrefix(site)))
}

// PeerPermissions are what peer may do at site's embedded server: publish
// its own transactions into site's inbox, relay others' it kept as hints
// (as itself: RelaySubject), ask site to ship again to itself (resend) and to take
// part in a check; receive the replies to its own requests. Nothing else:
// no other origin's inbox subject, no JetStream API (it cannot read, purge
// or delete a stream, or make a consumer), no other client's replies.
func PeerPermissions(site, peer casualdb.SiteID) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			InboxSubject(site, peer),
			InboxSubject(site, "*") + "." + string(peer),
			ResendSubject(site, peer),
			CheckSubject(site),
		},
			// Never as the site itself (a relay of its own transactions).
			Deny: []string{InboxSubject(site, site) + ".>"}},
		Subscribe: &server.SubjectPermission{Allow: []string{PeerInboxPrefix(peer) + ".>"}},
	}
}

// peerAuth authenticates the clients of a site's embedded server when it
// speaks TLS: a client is the site named by the common name of its verified
// certificate, with that site's permissions (PeerPermissions). The
// sidecar's own connection (in process, no socket) and its own certificate
// may do anything. Anything else is refused and counted.
type peerAuth struct {
	site    casualdb.SiteID
	log     *slog.Logger
	refused atomic.Uint64
}

var _ server.Authentication = (*peerAuth)(nil)

func (a *peerAuth) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return a.refuse(c, "not a client connection")
	}
	if addr := c.RemoteAddress(); addr != nil && addr.Network() == "pipe" {
		// The sidecar's own in-process connection: no socket reaches it.
		c.RegisterUser(&server.User{Username: "local"})
		return true
	}
	st := c.GetTLSConnectionState()
	if st == nil || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return a.refuse(c, "no verified client certificate")
	}
	name := casualdb.SiteID(st.VerifiedChains[0][0].Subject.CommonName)
	if !name.Valid() {
		return a.refuse(c, "the certificate's common name is not a site name")
	}
	if name == a.site {
		c.RegisterUser(&server.User{Username: "site:" + string(name)})
		return true
	}
	c.RegisterUser(&server.User{Username: "site:" + string(name), Permissions: PeerPermissions(a.site, name)})
	return true
}

func (a *peerAuth) refuse(c server.ClientAuthentication, why string) bool {
	a.refused.Add(1)
	var from string
	if addr := c.RemoteAddress(); addr != nil {
		from = addr.String()
	}
	a.log.Warn("nats: client refused", "from", from, "why", why)
	return false
}
