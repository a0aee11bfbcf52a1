package capture

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sync/errgroup"
)

// The stages of a local transaction that capture reports (Config.ObserveDelay).
const (
	StageDecoded  = "decoded"
	StageCaptured = "captured"
)

// reader owns the replication connection: it decodes the slot's stream into
// whole transactions, sends them in commit order on out, and reports the
// flush position the processor confirms.
type reader struct {
	c       *Capturer
	out     chan<- decodedTx
	conn    *pgconn.PgConn
	catConn *pgx.Conn
	dec     *decoder

	received atomic.Uint64 // end of the last WAL data received
	wakeCh   chan struct{} // asks sendStatus for a keepalive now
}

// describe implements catalog: names and types of the relation's columns as
// pgoutput sent them, which of them form the primary key, and the columns of
// its unique indexes other than the primary key (those a row claims values
// of; partial and expression indexes are left out: apply parks their
// collisions instead of settling them by claim). pgoutput sends the
// relation again after DDL (CREATE INDEX included), so the list follows
// the table.
func (r *reader) describe(ctx context.Context, m *pglogrepl.RelationMessage) (casualdb.Relation, []string, error) {
	rel := casualdb.Relation{Table: casualdb.TableName(m.Namespace, m.RelationName), Schema: m.Namespace, Name: m.RelationName}
	oids := make([]uint32, len(m.Columns))
	mods := make([]int32, len(m.Columns))
	for i, c := range m.Columns {
		oids[i], mods[i] = c.DataType, c.TypeModifier
	}
	var types, pk, unique []string
	err := r.catConn.QueryRow(ctx, `
		SELECT (SELECT array_agg(format_type(o, nullif(m, -1)) ORDER BY n) FROM unnest($1::oid[], $2::int[]) WITH ORDINALITY AS u(o, m, n)),
		       coalesce((SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		                 WHERE i.indrelid = $3::oid AND i.indisprimary), '{}'),
		       coalesce((SELECT array_agg(DISTINCT a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		                 WHERE i.indrelid = $3::oid AND i.indisunique AND NOT i.indisprimary AND i.indpred IS NULL AND i.indexprs IS NULL), '{}')`,
		oids, mods, m.RelationID).Scan(&types, &pk, &unique)
	if err != nil {
		return rel, nil, fmt.Errorf("describe relation %s: %w", rel.Table, err)
	}
	isKey := map[string]bool{}
	for _, k := range pk {
		isKey[k] = true
	}
	if len(pk) == 0 {
		// No primary key (any more): fall back on the replica identity.
		for _, c := range m.Columns {
			isKey[c.Name] = c.Flags&1 != 0
		}
	}
	for i, c := range m.Columns {
		t := "text"
		if i < len(types) {
			t = types[i]
		}
		rel.Columns = append(rel.Columns, casualdb.Column{Name: c.Name, Type: t, Key: isKey[c.Name]})
	}
	if len(unique) == 0 {
		unique = nil
	}
	return rel, unique, nil
}

// wake asks the server for a keepalive now (so that the watermark moves).
func (r *reader) wake() {
	select {
	case r.wakeCh <- struct{}{}:
	default:
	}
}

// run streams the slot until ctx is done or an error. Two goroutines share
// the replication connection: one receives (without a deadline: setting one
// per message cost more than decoding it), the other sends the standby
// status on a timer and whenever a keepalive is wanted (wake). They never
// write and read the same part of the connection; cancelling closes it.
func (r *reader) run(ctx context.Context, startLSN uint64, skipUpTo uint64) error {
	cfg := r.c.cfg
	err := pglogrepl.StartReplication(ctx, r.conn, cfg.Slot, pglogrepl.LSN(startLSN), pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + strings.ReplaceAll(cfg.Publication, "'", "''") + "'"},
	})
	if err != nil {
		return fmt.Errorf("start replication on slot %s: %w", cfg.Slot, err)
	}
	g, gctx := errgroup.WithContext(ctx)
	stop := context.AfterFunc(gctx, func() { _ = r.conn.Conn().Close() })
	defer stop()
	g.Go(func() error { return r.sendStatus(gctx) })
	g.Go(func() error {
		for {
			raw, err := r.conn.ReceiveMessage(context.Background())
			if err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				return fmt.Errorf("receive from slot %s: %w", cfg.Slot, err)
			}
			switch msg := raw.(type) {
			case *pgproto3.ErrorResponse:
				return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
			case *pgproto3.CopyData:
				if err := r.handle(gctx, msg.Data, skipUpTo); err != nil {
					return err
				}
			}
		}
	})
	return g.Wait()
}

// sendStatus confirms the slot's position every StatusInterval, and asks for
// a keepalive at once when woken.
func (r *reader) sendStatus(ctx context.Context) error {
	tick := time.NewTicker(r.c.cfg.StatusInterval)
	defer tick.Stop()
	wake := false
	for {
		flush := r.c.flushed.Load()
		write := max(r.received.Load(), flush)
		err := pglogrepl.SendStandbyStatusUpdate(ctx, r.conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: pglogrepl.LSN(write),
			// Always explicit: pglogrepl copies the write position into a
			// zero flush position, which would confirm what the outbox
			// does not hold yet.
			WALFlushPosition: pglogrepl.LSN(max(flush, 1)),
			WALApplyPosition: pglogrepl.LSN(max(flush, 1)),
			ReplyRequested:   wake,
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("send standby status: %w", err)
		}
		select {
		case <-tick.C:
			wake = false
		case <-r.wakeCh:
			wake = true
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *reader) handle(ctx context.Context, data []byte, skipUpTo uint64) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		if ka.ReplyRequested {
			r.wake()
		}
		if !r.dec.inTx() {
			// Everything up to the server's sent position is decoded: an
			// idle slot advances to it and pins no WAL.
			return r.send(ctx, decodedTx{watermark: uint64(ka.ServerWALEnd)})
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse xlogdata: %w", err)
		}
		r.received.Store(uint64(xld.WALStart) + uint64(len(xld.WALData)))
		dtx, err := r.dec.decode(ctx, xld.WALData)
		if err != nil {
			return err
		}
		if dtx == nil {
			return nil
		}
		if !dtx.applied && dtx.tx.LSN <= skipUpTo {
			// Already in the outbox before a restart: its metadata was
			// re-derived from there.
			return r.send(ctx, decodedTx{watermark: dtx.tx.LSN})
		}
		if !dtx.applied && r.c.cfg.ObserveDelay != nil {
			r.c.cfg.ObserveDelay(StageDecoded, time.Since(dtx.tx.CommitTime))
		}
		return r.send(ctx, *dtx)
	}
	return nil
}

func (r *reader) send(ctx context.Context, d decodedTx) error {
	select {
	case r.out <- d:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
