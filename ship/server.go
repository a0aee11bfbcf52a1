package ship

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ServerConfig configures an embedded NATS server.
type ServerConfig struct {
	// Listen is host:port for clients (peers publish here). Required.
	Listen string
	// StoreDir holds JetStream's files. Required.
	StoreDir string
	// SyncAlways makes JetStream fsync every write (survives power loss,
	// slower). Default false: fsync every 2 minutes, which survives a crash
	// of the process but not of the machine.
	SyncAlways bool
	// TLS, when set, makes the server speak TLS only, and require and
	// verify a client certificate (its ClientAuth and ClientCAs).
	TLS *tls.Config
	// Site is the site whose server this is. With TLS, a client is the
	// site its certificate names, with that site's permissions (see
	// PeerPermissions).
	Site casualdb.SiteID
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Server is a NATS server with JetStream embedded in the sidecar.
type Server struct {
	ns   *server.Server
	auth *peerAuth
}

// StartServer starts an embedded NATS server and waits until it accepts
// clients.
func StartServer(cfg ServerConfig) (*Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w: nats listen address %q: %v", casualdb.ErrConfig, cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("%w: nats listen port %q: %v", casualdb.ErrConfig, portStr, err)
	}
	if cfg.StoreDir == "" {
		return nil, fmt.Errorf("%w: nats store directory is required", casualdb.ErrConfig)
	}
	opts := &server.Options{
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		SyncAlways: cfg.SyncAlways,
		NoSigs:     true,
		// Streams are per site and small; the server must not claim the
		// whole machine.
		JetStreamMaxMemory: 64 << 20,
		MaxPayload:         8 << 20,
	}
	var auth *peerAuth
	if cfg.TLS != nil {
		opts.TLS, opts.TLSConfig, opts.TLSTimeout = true, cfg.TLS, 5
		opts.TLSVerify = cfg.TLS.ClientAuth == tls.RequireAndVerifyClientCert
		if opts.TLSVerify {
			log := cfg.Logger
			if log == nil {
				log = slog.Default()
			}
			auth = &peerAuth{site: cfg.Site, log: log}
			opts.CustomClientAuthentication = auth
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats server on %s: %w", cfg.Listen, err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("start nats server on %s: not ready after 10s (port in use?)", cfg.Listen)
	}
	return &Server{ns: ns, auth: auth}, nil
}

// InProcess connects a client of this process to the server without a
// socket: the sidecar's own connection skips the loopback round trips.
func (s *Server) InProcess() nats.Option { return nats.InProcessServer(s.ns) }

// Refused returns how many clients the server refused (without TLS: 0,
// every client is taken).
func (s *Server) Refused() uint64 {
	if s.auth == nil {
		return 0
	}
	return s.auth.refused.Load()
}

// ClientURL is the URL clients use to reach the server.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Close shuts the server down and waits; safe to call twice.
func (s *Server) Close() {
	if s == nil || s.ns == nil {
		return
	}
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// Secure returns the options of a client connection with TLS cfg: none
// when cfg is nil (plain text).
func Secure(cfg *tls.Config) []nats.Option {
	if cfg == nil {
		return nil
	}
	return []nats.Option{nats.Secure(cfg)}
}
