package ship

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultMaxBatch is ShipperConfig.MaxBatch's default.
const DefaultMaxBatch = 256

// ShipperConfig configures the shipping of one site's outbox to one peer.
type ShipperConfig struct {
	Site     casualdb.SiteID
	Peer     casualdb.SiteID
	PeerURL  string // the peer's NATS URL; empty: unknown yet (SetPeerURL)
	Outbox   *Outbox
	MaxBatch int           // transactions per publish round; default DefaultMaxBatch (256)
	AckWait  time.Duration // how long an unacknowledged outbox message waits before redelivery; default 30s
	Logger   *slog.Logger
	// ObserveDelay, when set, is told for every shipped transaction how
	// long after its commit the peer acknowledged it.
	ObserveDelay func(time.Duration)
	// OnAck, when set, is called after the peer acknowledged a publish
	// (Acked moved). It must not block.
	OnAck func()
	// TLS, when set, is the connection's TLS (client certificate, CA).
	TLS *tls.Config
}

// Shipper copies the outbox into one peer's inbox.
type Shipper struct {
	cfg     ShipperConfig
	log     *slog.Logger
	url     atomic.Pointer[string] // the peer's NATS URL; gossip may change it
	shipped atomic.Uint64
	up      atomic.Bool
	// rewind, when non-zero, asks Run to ship again from that outbox
	// sequence (the peer reported it missing); wake tells it at once.
	rewind atomic.Uint64
	wake   chan struct{}
	// resent counts rewinds: it makes the message ids of what is shipped
	// again new, so that the peer's inbox cannot drop them as duplicates.
	resent atomic.Uint64
	// idPrefix starts every message id it publishes (Outbox.IDPrefix).
	idPrefix string
	// backoff is the wait before the next connection attempt (Run's
	// goroutine only); it resets once a session has shipped something.
	backoff time.Duration

	ackMu sync.Mutex
	acked ackTracker
}

// ackTracker follows the outbox sequence up to which the peer holds every
// transaction, from the acknowledgements of its inbox (which may come out
// of order after a failed publish).
type ackTracker struct {
	floor uint64
	above map[uint64]bool
}

// ack notes that the peer holds seq.
func (t *ackTracker) ack(seq uint64) {
	if seq <= t.floor {
		return
	}
	if seq != t.floor+1 {
		if t.above == nil {
			t.above = map[uint64]bool{}
		}
		t.above[seq] = true
		return
	}
	t.floor = seq
	for t.above[t.floor+1] {
		delete(t.above, t.floor+1)
		t.floor++
	}
}

// raise sets the floor to at least f (the consumer's acknowledgement floor,
// which covers what an earlier run shipped and what the outbox purged).
func (t *ackTracker) raise(f uint64) {
	if f <= t.floor {
		return
	}
	t.floor = f
	for seq := range t.above {
		if seq <= f {
			delete(t.above, seq)
		}
	}
	for t.above[t.floor+1] {
		delete(t.above, t.floor+1)
		t.floor++
	}
}

// Acked returns the outbox sequence up to which the peer's inbox holds
// every transaction, as far as this shipper knows (from the consumer's
// acknowledgement floor when a round starts, and the peer's acknowledgements
// since): what W-durability counts, without asking the server.
func (s *Shipper) Acked() uint64 {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	return s.acked.floor
}

// maxBackoff bounds the wait between two attempts to reach a peer.
const maxBackoff = time.Second

// errRewind ends a shipping round so that the next starts from the rewind
// point.
var errRewind = errors.New("rewind requested")

// Rewind makes the shipper ship everything from outbox sequence from again
// (the peer reports it missing), under fresh message ids; the peer skips
// what it has. A sequence the outbox no longer holds is shipped from the
// oldest one it holds.
func (s *Shipper) Rewind(from uint64) {
	if from == 0 {
		from = 1
	}
	s.rewind.Store(from)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// ConsumerName is the outbox consumer that tracks what peer holds.
func ConsumerName(peer casualdb.SiteID) string { return "ship_" + string(peer) }

// NewShipper validates cfg.
func NewShipper(cfg ShipperConfig) (*Shipper, error) {
	if cfg.Peer == "" || cfg.Outbox == nil {
		return nil, fmt.Errorf("%w: shipper needs a peer and an outbox", casualdb.ErrConfig)
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Shipper{cfg: cfg, log: cfg.Logger.With("component", "ship", "peer", string(cfg.Peer)), wake: make(chan struct{}, 1), backoff: 100 * time.Millisecond,
		idPrefix: cfg.Outbox.IDPrefix(cfg.Peer)}
	s.url.Store(&cfg.PeerURL)
	return s, nil
}

// metaURL is the consumer metadata key that remembers the peer's NATS URL,
// so that a restarted sidecar ships to a peer it learned of by gossip
// before gossip tells it again.
const metaURL = "casualdb_nats_url"

// PeerURL returns the NATS URL the shipper publishes to.
func (s *Shipper) PeerURL() string { return *s.url.Load() }

// SetPeerURL changes where the shipper publishes (the peer came back at
// another address); the next connection uses it. Call EnsureConsumer to
// remember it across restarts.
func (s *Shipper) SetPeerURL(url string) { s.url.Store(&url) }

// Peers lists the peers the outbox keeps transactions for (one durable
// consumer each) with the NATS URL each was last shipped to ("" if none
// was recorded).
func (o *Outbox) Peers(ctx context.Context) (map[casualdb.SiteID]string, error) {
	out := map[casualdb.SiteID]string{}
	lister := o.stream.ListConsumers(ctx)
	for info := range lister.Info() {
		if peer, ok := strings.CutPrefix(info.Name, "ship_"); ok {
			out[casualdb.SiteID(peer)] = info.Config.Metadata[metaURL]
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("list outbox consumers: %w", err)
	}
	return out, nil
}

// EnsureConsumer creates the peer's durable consumer on the outbox, so that
// the outbox keeps everything for a peer that has never connected yet.
//
// Messages an earlier run had taken and not acknowledged (it stopped or
// crashed with them in flight) would come again only after AckWait, and
// the peer would wait for them that long: such a consumer is created
// afresh from its acknowledgement floor, so that they come at once. A crash
// between the delete and the create costs a re-shipping of what the outbox
// still holds, which the peer recognises as duplicates.
func (s *Shipper) EnsureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	return s.ensureConsumer(ctx, 0)
}

// ensureConsumer is EnsureConsumer; from > 0 restarts the consumer there.
func (s *Shipper) ensureConsumer(ctx context.Context, from uint64) (jetstream.Consumer, error) {
	cfg := jetstream.ConsumerConfig{
		Durable:       ConsumerName(s.cfg.Peer),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.AckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: 4 * s.cfg.MaxBatch,
		Metadata:      map[string]string{metaURL: s.PeerURL()},
	}
	st := s.cfg.Outbox.stream
	if old, err := st.Consumer(ctx, cfg.Durable); err == nil {
		info, err := old.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("outbox consumer for %s: %w", s.cfg.Peer, err)
		}
		// Where it starts cannot change: keep what it was created with.
		cfg.DeliverPolicy, cfg.OptStartSeq = info.Config.DeliverPolicy, info.Config.OptStartSeq
		if info.NumAckPending > 0 || from > 0 {
			if err := st.DeleteConsumer(ctx, cfg.Durable); err != nil {
				return nil, fmt.Errorf("reset outbox consumer for %s: %w", s.cfg.Peer, err)
			}
			cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
			cfg.OptStartSeq = info.AckFloor.Stream + 1
			if from > 0 {
				// The message holding transaction from (or the oldest
				// one the outbox holds).
				msgSeq, _, err := s.cfg.Outbox.MsgSeqOf(ctx, from)
				if err != nil {
					return nil, fmt.Errorf("rewind outbox consumer for %s: %w", s.cfg.Peer, err)
				}
				if msgSeq > 0 {
					cfg.OptStartSeq = msgSeq
				}
			}
			s.log.Debug("outbox consumer restarted", "pending", info.NumAckPending, "ack_floor", info.AckFloor.Stream, "from_seq", cfg.OptStartSeq)
		}
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("outbox consumer for %s: %w", s.cfg.Peer, err)
	}
	c, err := st.CreateOrUpdateConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create outbox consumer for %s: %w", s.cfg.Peer, err)
	}
	// The floor counts messages; the tracker, transactions. Unknown, the
	// tracker starts lower and rises with the peer's acknowledgements
	// (W-durability waits meanwhile).
	info, err := c.Info(ctx)
	if err != nil {
		s.log.Debug("outbox consumer's acknowledgement floor unknown", "err", err)
		return c, nil
	}
	last, err := s.cfg.Outbox.lastTxOf(ctx, info.AckFloor.Stream)
	if err != nil {
		s.log.Debug("outbox consumer's acknowledgement floor unknown", "msg", info.AckFloor.Stream, "err", err)
		return c, nil
	}
	s.ackMu.Lock()
	s.acked.raise(last)
	s.ackMu.Unlock()
	return c, nil
}

// Shipped returns the number of transactions the peer's inbox acknowledged.
func (s *Shipper) Shipped() uint64 { return s.shipped.Load() }

// Connected reports whether the peer's NATS is reachable now.
func (s *Shipper) Connected() bool { return s.up.Load() }

// Run ships until ctx is done. A peer that cannot be reached is retried with
// back-off; nothing is acknowledged in the outbox until the peer holds it.
func (s *Shipper) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		from := s.rewind.Swap(0)
		if from > 0 {
			s.resent.Add(1)
			s.log.Warn("the peer reports transactions missing: shipping again", "from_seq", from)
		}
		if err := s.round(ctx, from); err != nil {
			return err
		}
	}
	return nil
}

// round ships from one consumer until ctx is done (nil) or a rewind is
// requested (nil: Run starts the next round).
func (s *Shipper) round(ctx context.Context, from uint64) error {
	cons, err := s.ensureConsumer(ctx, from)
	if err != nil {
		return err
	}
	msgs := make(chan jetstream.Msg, 4*s.cfg.MaxBatch)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-ctx.Done():
			_ = m.Nak()
		}
	}, jetstream.PullMaxMessages(2*s.cfg.MaxBatch))
	if err != nil {
		return fmt.Errorf("consume outbox for %s: %w", s.cfg.Peer, err)
	}

	// On the way out, hand back what was taken and not shipped, so that
	// the next run gets it at once rather than after AckWait.
	defer func() {
		cc.Stop()
		for {
			select {
			case m := <-msgs:
				_ = m.Nak()
			default:
				return
			}
		}
	}()
	err = s.session(ctx, msgs)
	s.up.Store(false)
	if ctx.Err() != nil || errors.Is(err, errRewind) {
		return nil
	}
	// The next round re-creates the consumer from its acknowledgement
	// floor: what was in flight comes again first, in outbox order. Going
	// on with this consumer would ship later messages before the ones
	// handed back, and the peer would hold them back as a gap (many of
	// them can fill its inbox consumer's pending window for good).
	s.log.Warn("peer unreachable; retrying", "err", err, "in", s.backoff)
	select {
	case <-time.After(s.backoff):
	case <-ctx.Done():
	}
	// At most a second: a peer that comes back (a restarted sidecar) gets
	// its backlog within a second, and a connection attempt to one that is
	// down costs next to nothing.
	s.backoff = min(2*s.backoff, maxBackoff)
	return nil
}

// session holds one connection to the peer and ships until it fails.
func (s *Shipper) session(ctx context.Context, msgs <-chan jetstream.Msg) error {
	url := s.PeerURL()
	if url == "" {
		return fmt.Errorf("address of %s unknown (gossip has not told it yet)", s.cfg.Peer)
	}
	nc, err := nats.Connect(url, append(PeerOptions(s.cfg.TLS, s.cfg.Site), nats.Name("casualdb-ship-"+string(s.cfg.Site)), nats.Timeout(2*time.Second),
		nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond))...)
	if err != nil {
		return fmt.Errorf("connect to %s at %s: %w", s.cfg.Peer, url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream at %s: %w", s.cfg.Peer, err)
	}
	s.up.Store(true)
	var pending []jetstream.Msg
	for {
		if s.rewind.Load() != 0 {
			for _, m := range pending {
				_ = m.Nak()
			}
			return errRewind
		}
		if len(pending) == 0 {
			select {
			case m := <-msgs:
				pending = append(pending, m)
			case <-s.wake:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if ctx.Err() != nil {
			for _, m := range pending {
				_ = m.Nak()
			}
			return ctx.Err()
		}
	drain:
		for len(pending) < s.cfg.MaxBatch {
			select {
			case m := <-msgs:
				pending = append(pending, m)
			default:
				break drain
			}
		}
		// A message handed back after a failed publish comes again behind
		// later ones: restore outbox order (a bundle must be in order, or
		// the peer meets a gap inside it), and keep one copy of each.
		pending = inOrder(pending)
		s.backoff = 100 * time.Millisecond
		if err := s.publish(ctx, js, pending); err != nil {
			// Leave the batch unacknowledged but ask for it again soon.
			for _, m := range pending {
				_ = m.NakWithDelay(time.Second)
			}
			return err
		}
		pending = pending[:0]
	}
}

// inOrder sorts msgs by outbox sequence and drops repeated deliveries of one
// message (the last copy is kept: acknowledging it acknowledges the message).
func inOrder(msgs []jetstream.Msg) []jetstream.Msg {
	seq := func(m jetstream.Msg) uint64 {
		if md, err := m.Metadata(); err == nil {
			return md.Sequence.Stream
		}
		return 0
	}
	slices.SortStableFunc(msgs, func(a, b jetstream.Msg) int { return cmp.Compare(seq(a), seq(b)) })
	out := msgs[:0]
	for i, m := range msgs {
		if i+1 < len(msgs) && seq(msgs[i+1]) == seq(m) && seq(m) != 0 {
			continue
		}
		out = append(out, m)
	}
	return out
}

// outboxMsg is an outbox message with what the shipper reads of it.
type outboxMsg struct {
	m       jetstream.Msg
	entries []Entry
	commit  time.Time // of its first transaction
}

// publish ships batch (outbox messages in delivery order) to the peer's
// inbox as bundles, and acknowledges each outbox message once the peer holds
// its bundle.
func (s *Shipper) publish(ctx context.Context, js jetstream.JetStream, batch []jetstream.Msg) error {
	msgs := make([]outboxMsg, 0, len(batch))
	for _, m := range batch {
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("outbox message metadata: %w", err)
		}
		entries, err := outboxEntries(m.Headers(), m.Data(), md.Sequence.Stream)
		if err != nil {
			// Capture wrote it: it is always well formed. Stop rather than
			// skip it.
			return fmt.Errorf("outbox message %d: %w", md.Sequence.Stream, err)
		}
		om := outboxMsg{m: m, entries: entries}
		if us, err := strconv.ParseInt(m.Headers().Get(HeaderCommit), 10, 64); err == nil {
			om.commit = time.UnixMicro(us)
		}
		msgs = append(msgs, om)
	}
	type bundle struct {
		msgs []outboxMsg
		fut  jetstream.PubAckFuture
	}
	var bundles []bundle
	for start := 0; start < len(msgs); {
		end, size := start, 0
		for end < len(msgs) && (end == start || size+len(msgs[end].m.Data()) <= maxBundleBytes) {
			size += len(msgs[end].m.Data()) + len(msgs[end].entries)*2*binary.MaxVarintLen64 + len(msgs[end].m.Headers().Get(HeaderSig))
			end++
		}
		out := s.inboxMsg(msgs[start:end])
		fut, err := js.PublishMsgAsync(out)
		if err != nil {
			return fmt.Errorf("publish to %s: %w", s.cfg.Peer, err)
		}
		bundles = append(bundles, bundle{msgs: msgs[start:end], fut: fut})
		start = end
	}
	timeout := time.After(10 * time.Second)
	for _, b := range bundles {
		select {
		case <-b.fut.Ok():
		case err := <-b.fut.Err():
			return fmt.Errorf("publish to inbox of %s: %w", s.cfg.Peer, err)
		case <-timeout:
			return fmt.Errorf("publish to inbox of %s: no acknowledgement in 10s", s.cfg.Peer)
		case <-ctx.Done():
			return ctx.Err()
		}
		for _, om := range b.msgs {
			if err := om.m.Ack(); err != nil {
				return fmt.Errorf("ack outbox message: %w", err)
			}
			s.ackMu.Lock()
			for _, e := range om.entries {
				s.acked.ack(e.Seq)
			}
			s.ackMu.Unlock()
			s.shipped.Add(uint64(len(om.entries)))
			if s.cfg.ObserveDelay != nil && !om.commit.IsZero() {
				d := time.Since(om.commit)
				for range om.entries {
					s.cfg.ObserveDelay(d)
				}
			}
		}
		if s.cfg.OnAck != nil {
			s.cfg.OnAck()
		}
	}
	return nil
}

// inboxMsg builds the inbox message that carries the transactions of msgs:
// the transaction itself when there is one, a bundle otherwise.
func (s *Shipper) inboxMsg(msgs []outboxMsg) *nats.Msg {
	var entries []Entry
	for _, om := range msgs {
		entries = append(entries, om.entries...)
	}
	first, last := msgs[0], msgs[len(msgs)-1]
	out := nats.NewMsg(InboxSubject(s.cfg.Peer, s.cfg.Site))
	out.Header.Set(HeaderSeq, strconv.FormatUint(entries[0].Seq, 10))
	out.Header.Set(HeaderLSN, last.m.Headers().Get(HeaderLSN))
	out.Header.Set(HeaderOrigin, string(s.cfg.Site))
	out.Header.Set(HeaderEpoch, s.cfg.Outbox.Epoch())
	// After a rewind the ids are new: the inbox must store what it may
	// have seen (and lost) within its de-duplication window.
	suffix := ""
	if n := s.resent.Load(); n > 0 {
		suffix = "~" + strconv.FormatUint(n, 10)
	}
	// The origin's signatures of its runs, for whoever keeps one of these
	// transactions as a hint (sign.go).
	for _, om := range msgs {
		for _, v := range om.m.Headers().Values(HeaderSig) {
			out.Header.Add(HeaderSig, v)
		}
	}
	if sg := s.cfg.Outbox.signer; sg != nil && len(out.Header.Values(HeaderSig)) > 0 {
		out.Header.Set(HeaderCert, sg.Cert())
	}
	firstID := s.idPrefix + outboxID(first.m)
	if len(entries) == 1 {
		out.Data = entries[0].Data
		out.Header.Set(nats.MsgIdHdr, firstID+suffix)
		return out
	}
	if len(msgs) == 1 && first.m.Headers().Get(HeaderBundle) != "" {
		// One outbox bundle: its body is the inbox bundle.
		out.Data = first.m.Data()
	} else {
		size := 0
		for _, e := range entries {
			size += len(e.Data) + 2*binary.MaxVarintLen64
		}
		body := make([]byte, 0, size)
		for _, e := range entries {
			body = AppendEntry(body, e)
		}
		out.Data = body
	}
	out.Header.Set(HeaderBundle, strconv.Itoa(len(entries)))
	// A bundle cut the same way is the same message: the inbox drops it if
	// it is published again after a lost acknowledgement. Cut differently
	// (after a restart), apply recognises the transactions it already has.
	out.Header.Set(nats.MsgIdHdr, firstID+"+"+strconv.Itoa(len(entries))+"+"+s.lastTxID(last.m)+suffix)
	return out
}

// lastTxID returns the id (casualdb.Tx.ID) of an outbox message's last
// transaction, from its commit LSN header; a header Publish did not write
// is kept as it is (the id stays the same each time the message is read).
func (s *Shipper) lastTxID(m jetstream.Msg) string {
	lsn, err := strconv.ParseUint(m.Headers().Get(HeaderLSN), 10, 64)
	if err != nil {
		return string(s.cfg.Site) + "-" + m.Headers().Get(HeaderLSN)
	}
	return (&casualdb.Tx{Origin: s.cfg.Site, LSN: lsn}).ID()
}

// outboxID returns the transaction id an outbox message carries (in the
// message id header before this version).
func outboxID(m jetstream.Msg) string {
	if id := m.Headers().Get(HeaderID); id != "" {
		return id
	}
	return m.Headers().Get(nats.MsgIdHdr)
}

// Trim purges the outbox messages that every peer has acknowledged and
// capture has recorded the versions of (recordedMsg: the message holding the
// last transaction capture recorded).
func (o *Outbox) Trim(ctx context.Context, peers []casualdb.SiteID, recordedMsg uint64) error {
	floor := recordedMsg
	for _, p := range peers {
		// A peer without a consumer (being re-created) has floor 0:
		// nothing is purged this round.
		f, err := o.AckFloor(ctx, p)
		if err != nil {
			return fmt.Errorf("trim outbox: %w", err)
		}
		floor = min(floor, f)
	}
	if floor == 0 {
		return nil
	}
	return o.Purge(ctx, floor+1)
}

// ResendSubject is where peer asks origin's sidecar to ship to it again
// (core NATS request/reply on the origin's own server). It names the peer,
// to which the server's permissions pin a peer's requests (PeerPermissions):
// a site can ask only for itself.
func ResendSubject(origin, peer casualdb.SiteID) string {
	return "casualdb.resend." + string(origin) + "." + string(peer)
}

// ResendSubjects are the subjects origin's sidecar takes resend requests
// on: every peer's, and the one sidecars of earlier versions asked on
// (casualdb.resend.<origin>, naming no peer), which a site with TLS lets no
// peer publish.
func ResendSubjects(origin casualdb.SiteID) []string {
	return []string{"casualdb.resend." + string(origin), ResendSubject(origin, "*")}
}

// ResendAsker returns the peer a resend request's subject names; "" for the
// subject of earlier versions.
func ResendAsker(subj string) casualdb.SiteID {
	rest, ok := strings.CutPrefix(subj, "casualdb.resend.")
	if !ok {
		return ""
	}
	_, peer, _ := strings.Cut(rest, ".")
	return casualdb.SiteID(peer)
}

// ResendRequest asks origin to ship to Peer again from outbox sequence From.
type ResendRequest struct {
	Peer casualdb.SiteID `json:"peer"`
	From uint64          `json:"from"`
}

// RequestResend asks the origin whose NATS is at url to ship to peer again
// from sequence from (peer has waited for it too long: lost somewhere).
func RequestResend(ctx context.Context, url string, origin, peer casualdb.SiteID, from uint64, opts ...nats.Option) error {
	nc, err := nats.Connect(url, append(opts, nats.Name("casualdb-resend-"+string(peer)), nats.Timeout(2*time.Second))...)
	if err != nil {
		return fmt.Errorf("ask %s to resend: connect to %s: %w", origin, url, err)
	}
	defer nc.Close()
	body, _ := json.Marshal(ResendRequest{Peer: peer, From: from})
	reply, err := nc.RequestWithContext(ctx, ResendSubject(origin, peer), body)
	if err != nil {
		return fmt.Errorf("ask %s to resend from %d: %w", origin, from, err)
	}
	if string(reply.Data) != "ok" {
		return fmt.Errorf("ask %s to resend from %d: %s", origin, from, reply.Data)
	}
	return nil
}
