package pgtest

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATS is an embedded nats-server with JetStream, listening on 127.0.0.1 at
// a free port.
type NATS struct {
	srv      *server.Server
	shutdown sync.Once
}

// StartNATS starts a NATS server with JetStream storing in storeDir and waits
// up to 10s until it accepts connections.
func StartNATS(storeDir string) (*NATS, error) {
	if storeDir == "" {
		return nil, errors.New("start nats: store dir is required")
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "pgtest",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   storeDir,
		NoLog:      true,
		NoSigs:     true, // signals belong to the test binary or casualdb
	})
	if err != nil {
		return nil, fmt.Errorf("start nats: %w", err)
	}
	srv.Start()
	n := &NATS{srv: srv}
	if !srv.ReadyForConnections(10 * time.Second) {
		n.Shutdown()
		return nil, errors.New("start nats: not ready for connections after 10s")
	}
	if !srv.JetStreamEnabled() {
		n.Shutdown()
		return nil, errors.New("start nats: JetStream did not start")
	}
	return n, nil
}

// URL returns the client URL, nats://127.0.0.1:PORT.
func (n *NATS) URL() string { return n.srv.ClientURL() }

// Shutdown stops the server and waits until it has. It is safe to call twice.
func (n *NATS) Shutdown() {
	n.shutdown.Do(func() {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
	})
}
