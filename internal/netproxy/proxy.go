package netproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// State is what a Proxy does with its connections.
type State int

// The states of a Proxy; see the package documentation.
const (
	Up State = iota
	Held
	Cut
)

// String returns "up", "held" or "cut".
func (s State) String() string {
	switch s {
	case Up:
		return "up"
	case Held:
		return "held"
	case Cut:
		return "cut"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Log keys.
const (
	logComponent = "component"
	logLink      = "link"
	logErr       = "err"
)

// bufSize is the most one direction of a connection reads before writing.
const bufSize = 32 << 10

// Config configures a Proxy. Start copies it.
type Config struct {
	// Listen is the address to listen on. Zero means "127.0.0.1:0": a free
	// loopback port (Addr tells which).
	Listen string
	// Target is the address dialled for every accepted connection; required.
	Target string
	// Name names the link in logs, e.g. "a->c". Zero means "Listen->Target".
	Name string
	// DialTimeout bounds each dial of Target. Zero means 5s.
	DialTimeout time.Duration
	// Logger receives connection events at debug level and failures to dial
	// at warn. Nil means slog.Default().
	Logger *slog.Logger
}

// Proxy forwards the connections accepted on one address to Target, in the
// State set by Heal, Hold and Cut. It starts Up.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	ln     net.Listener
	ctx    context.Context // ends at Close; dials and waits for Heal use it
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every connection's goroutines

	accepted atomic.Uint64
	reset    atomic.Uint64

	mu      sync.Mutex
	state   State
	changed chan struct{} // closed (and replaced) at every change of state and at Close
	conns   map[*link]struct{}
	closing bool

	closeOnce sync.Once
	closeErr  error
}

// link is one forwarded connection: client is what the proxy accepted,
// server what it dialled.
type link struct {
	client, server net.Conn
	once           sync.Once
}

// end closes both ends in order (FIN): what was written before still
// arrives. It is how a connection ends when one of its ends closed.
func (l *link) end() {
	l.once.Do(func() {
		_ = l.client.Close()
		_ = l.server.Close()
	})
}

// abort resets both ends, dropping what is in flight: how Cut and Close end
// a connection. end and abort are safe to call from any goroutine; the
// first call decides.
func (l *link) abort() {
	l.once.Do(func() {
		resetConn(l.client)
		resetConn(l.server)
	})
}

// resetConn closes c with SO_LINGER 0, so that the peer sees a reset rather
// than an orderly end and unsent bytes are dropped, as on a broken network.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// Start listens on cfg.Listen and forwards every connection to cfg.Target
// until Close.
func Start(cfg Config) (*Proxy, error) {
	if cfg.Target == "" {
		return nil, errors.New("start proxy: Config.Target is required")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("start proxy to %s: %w", cfg.Target, err)
	}
	if cfg.Name == "" {
		cfg.Name = ln.Addr().String() + "->" + cfg.Target
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		cfg:     cfg,
		log:     cfg.Logger.With(logComponent, "netproxy", logLink, cfg.Name),
		ln:      ln,
		ctx:     ctx,
		cancel:  cancel,
		changed: make(chan struct{}),
		conns:   map[*link]struct{}{},
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the address the proxy listens on, as host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.cfg.Target }

// State returns the current state.
func (p *Proxy) State() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// Conns returns the number of connections being forwarded (or held) now.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accepted returns how many connections the proxy has accepted, including
// those it reset at once because it was Cut.
func (p *Proxy) Accepted() uint64 { return p.accepted.Load() }

// Reset returns how many connections were reset by Cut, when it was called
// or because they arrived while Cut.
func (p *Proxy) Reset() uint64 { return p.reset.Load() }

// Heal lets bytes flow again, delivering what a hold kept back.
func (p *Proxy) Heal() { p.set(Up) }

// Hold stops bytes from moving either way while keeping every connection
// open, until Heal or Cut.
func (p *Proxy) Hold() { p.set(Held) }

// Cut resets every open connection and every new one until Heal.
func (p *Proxy) Cut() { p.set(Cut) }

func (p *Proxy) set(s State) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing || p.state == s {
		return
	}
	p.log.Debug("link " + s.String())
	p.state = s
	if s == Cut {
		for l := range p.conns {
			l.abort()
			p.reset.Add(1)
		}
		clear(p.conns)
	}
	close(p.changed)
	p.changed = make(chan struct{})
}

// Close stops accepting, closes every connection and waits until all the
// proxy's goroutines have returned. It is safe to call twice.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closing = true
		p.cancel()
		p.closeErr = p.ln.Close()
		for l := range p.conns {
			l.abort()
		}
		clear(p.conns)
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
		p.wg.Wait()
		if p.closeErr != nil {
			p.closeErr = fmt.Errorf("close proxy %s: %w", p.cfg.Name, p.closeErr)
		}
	})
	return p.closeErr
}

// acceptLoop accepts until the listener is closed.
func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			// Out of descriptors, say: try again shortly rather than spin.
			p.log.Warn("accept failed", logErr, err)
			select {
			case <-time.After(10 * time.Millisecond):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		p.accepted.Add(1)
		p.mu.Lock()
		switch {
		case p.closing:
			p.mu.Unlock()
			resetConn(c)
			return
		case p.state == Cut:
			p.mu.Unlock()
			p.reset.Add(1)
			p.log.Debug("connection refused: link cut")
			resetConn(c)
			continue
		}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

// serve dials the target for client and starts copying both ways.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: p.cfg.DialTimeout}
	server, err := d.DialContext(p.ctx, "tcp", p.cfg.Target)
	if err != nil {
		if p.ctx.Err() == nil {
			p.log.Warn("dial target failed", logErr, err)
		}
		resetConn(client)
		return
	}
	l := &link{client: client, server: server}
	p.mu.Lock()
	if p.closing || p.state == Cut { // changed while dialling
		p.mu.Unlock()
		p.reset.Add(1)
		l.abort()
		return
	}
	p.conns[l] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()
	p.log.Debug("connection open", "client", client.RemoteAddr().String())
	go func() {
		defer p.wg.Done()
		p.pump(l, server, client)
	}()
	p.pump(l, client, server)
}

// pump copies src to dst until either fails, holding each buffer while the
// link is Held; then it ends the whole connection (in order, unless Cut or
// Close reset it first).
func (p *Proxy) pump(l *link, dst, src net.Conn) {
	defer func() {
		l.end()
		p.mu.Lock()
		delete(p.conns, l)
		p.mu.Unlock()
	}()
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.mayForward() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// mayForward waits while the link is Held; it reports whether bytes may be
// written now (false once Cut or closing).
func (p *Proxy) mayForward() bool {
	for {
		p.mu.Lock()
		state, changed, closing := p.state, p.changed, p.closing
		p.mu.Unlock()
		switch {
		case closing || state == Cut:
			return false
		case state == Up:
			return true
		}
		select {
		case <-changed:
		case <-p.ctx.Done():
			return false
		}
	}
}
