package apply

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/casualdb/casualdb"
)

// Inbox is the site's inbox as apply reads it, one durable consumer per
// origin, its messages decoded by the transport: *ship.Inbox.
type Inbox interface {
	// Origins returns the origins that have transactions waiting.
	Origins(ctx context.Context) ([]casualdb.SiteID, error)
	// Consume starts origin's consumer afresh (what an earlier reader had
	// taken comes again at once) and calls deliver, on a goroutine of its
	// own and never concurrently, with each message it delivers, decoded;
	// deliver may block until its reader stops. pull is how many messages
	// it asks for at once. stop stops the consumer and waits for deliver's
	// last call.
	Consume(ctx context.Context, origin casualdb.SiteID, pull int, deliver func(*casualdb.InboxMsg)) (stop func(), err error)
}

// Bounds of what apply holds in memory per origin: taken from the inbox,
// not yet applied. A blocked origin's messages stay here (they are not
// handed back), so these bound how far ahead of its head an origin is read.
const (
	heldMsgs     = 1024    // inbox messages (a bundle is one)
	heldBytes    = 8 << 20 // their payload
	pullMsgs     = 256     // inbox messages a consumer asks for at once
	keepAliveAge = 20 * time.Second
)

// delivery is one inbox message, which carries one or more transactions
// (a bundle): it is acknowledged once every one of them is applied or known
// as a duplicate, or handed back (released) whole.
type delivery struct {
	m      *casualdb.InboxMsg
	sseq   uint64 // stream sequence: a redelivery of a held message has the same
	left   int
	taken  time.Time // taken from the inbox, or last told the server it is in progress
	acked  bool
	origin *originQueue
}

func (d *delivery) done() {
	d.left--
	if d.left == 0 && !d.acked {
		d.acked = true
		// A lost acknowledgement costs a redelivery, which apply
		// recognises as a duplicate.
		_ = d.m.Ack()
		d.origin.forget(d)
	}
}

// originQueue is what apply holds of one origin: a consumer that feeds a
// bounded channel, and the decoded transactions taken from it in sequence
// order. Only the apply loop touches held and seen.
type originQueue struct {
	origin casualdb.SiteID
	stop   func() // stops the consumer
	msgs   chan *casualdb.InboxMsg

	held  []inMsg              // in origin sequence order
	seen  map[uint64]*delivery // held deliveries by stream sequence
	bytes int                  // payload of the held deliveries
	retry time.Time            // after a failed run: not before then
}

func (q *originQueue) forget(d *delivery) {
	if q.seen[d.sseq] == d {
		delete(q.seen, d.sseq)
		q.bytes -= len(d.m.Data)
	}
}

// full tells whether the origin holds as much as it may.
func (q *originQueue) full() bool { return len(q.seen) >= heldMsgs || q.bytes >= heldBytes }

// intake owns the per-origin consumers of one run of apply.
type intake struct {
	inbox  Inbox
	queues map[casualdb.SiteID]*originQueue
	order  []*originQueue // sorted by origin
	wake   chan struct{}  // a message arrived somewhere
	cap    int
	pull   int
	// known tells an origin apply expects (a peer, or one it applied
	// before); nil: every origin. The others, strangers, are read up to
	// maxStrangers; waiting counts those left unread by the last discover.
	known   func(casualdb.SiteID) bool
	waiting int
}

// maxStrangers bounds the origins apply reads that are neither peers nor
// origins it applied before. Their names come only from what peers
// published (a relay names its origin), and each costs a consumer: a peer
// relaying under thousands of invented names must not make apply start
// thousands. Past the bound their messages wait in the inbox, counted.
const maxStrangers = 64

func newIntake(inbox Inbox, pull int) *intake {
	return &intake{inbox: inbox, queues: map[casualdb.SiteID]*originQueue{}, wake: make(chan struct{}, 1),
		cap: 2 * pull, pull: pull}
}

// discover starts a consumer for every origin that has transactions
// waiting, or that is named in also, and has none yet. ctx bounds the
// consumers' lives: their callbacks block while an origin's channel is
// full and return when ctx is done.
func (in *intake) discover(ctx context.Context, also []casualdb.SiteID) error {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	origins, err := in.inbox.Origins(lctx)
	if err != nil {
		return err
	}
	expected := func(o casualdb.SiteID) bool { return in.known == nil || in.known(o) || slices.Contains(also, o) }
	strangers := 0 // read already
	for o := range in.queues {
		if !expected(o) {
			strangers++
		}
	}
	in.waiting = 0
	read := also
	for _, o := range origins {
		if _, reading := in.queues[o]; !reading && !expected(o) {
			if strangers >= maxStrangers {
				in.waiting++
				continue
			}
			strangers++
		}
		read = append(read, o)
	}
	return in.ensure(ctx, read)
}

// ensure starts a consumer for every one of origins that has none yet; ctx
// bounds the consumers' lives, as for discover.
func (in *intake) ensure(ctx context.Context, origins []casualdb.SiteID) error {
	missing := false
	for _, o := range origins {
		if _, ok := in.queues[o]; !ok {
			missing = true
		}
	}
	if !missing {
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, o := range origins {
		if _, ok := in.queues[o]; ok {
			continue
		}
		q := &originQueue{origin: o, msgs: make(chan *casualdb.InboxMsg, in.cap), seen: map[uint64]*delivery{}}
		var err error
		q.stop, err = in.inbox.Consume(lctx, o, in.pull, func(m *casualdb.InboxMsg) {
			select {
			case q.msgs <- m:
				select {
				case in.wake <- struct{}{}:
				default:
				}
			case <-ctx.Done():
			}
		})
		if err != nil {
			return err
		}
		in.queues[o] = q
		in.order = append(in.order, q)
		slices.SortFunc(in.order, func(x, y *originQueue) int { return cmp.Compare(x.origin, y.origin) })
	}
	return nil
}

// stop stops every consumer and waits for their callbacks.
func (in *intake) stop() {
	var wg sync.WaitGroup
	for _, q := range in.order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.stop()
		}()
	}
	wg.Wait()
}

// take moves what arrived for each origin into its held transactions, as
// far as the bounds allow; decode returns one message's transactions
// (parking what does not decode).
func (in *intake) take(decode func(m *casualdb.InboxMsg, d *delivery) ([]inMsg, error)) error {
	for _, q := range in.order {
		added := false
	drain:
		for !q.full() {
			select {
			case m := <-q.msgs:
				if _, ok := q.seen[m.StreamSeq]; ok && m.StreamSeq != 0 {
					// Redelivered while held: the held copy's acknowledgement
					// (by stream sequence) covers it.
					continue
				}
				d := &delivery{m: m, sseq: m.StreamSeq, taken: time.Now(), origin: q}
				ims, err := decode(m, d)
				if err != nil {
					return err
				}
				d.left = len(ims)
				if d.left == 0 {
					continue // nothing in it decoded: parked and acknowledged
				}
				q.seen[d.sseq] = d
				q.bytes += len(m.Data)
				q.held = append(q.held, ims...)
				added = true
			default:
				break drain
			}
		}
		if added && !slices.IsSortedFunc(q.held, func(x, y inMsg) int { return cmp.Compare(x.seq, y.seq) }) {
			// In outbox order, whatever order the messages came in: a
			// transaction ahead of its predecessor would stall the origin.
			// (They nearly always come in order: check before sorting.)
			slices.SortStableFunc(q.held, func(x, y inMsg) int { return cmp.Compare(x.seq, y.seq) })
		}
	}
	return nil
}

// keepAlive tells the server that deliveries held for long are still in
// progress, so that they are not redelivered while their origin waits.
func (in *intake) keepAlive(now time.Time) {
	for _, q := range in.order {
		for _, d := range q.seen {
			if now.Sub(d.taken) > keepAliveAge {
				_ = d.m.InProgress()
				d.taken = now
			}
		}
	}
}

// release hands the newest held deliveries of q back to the inbox until it
// holds half its bound: an origin whose head waits for a missing sequence
// (it arrives after what it holds) would otherwise never read it.
func (q *originQueue) release(delay time.Duration) int {
	n := 0
	for len(q.held) > 0 && (len(q.seen) > heldMsgs/2 || q.bytes > heldBytes/2) {
		d := q.held[len(q.held)-1].d
		if q.held[0].d == d {
			break // the head's own delivery stays
		}
		q.held = slices.DeleteFunc(q.held, func(im inMsg) bool { return im.d == d })
		if !d.acked {
			_ = d.m.NakWithDelay(delay)
		}
		q.forget(d)
		n++
	}
	return n
}
