// Package node is one running CasualDB site, as a library: capture, ship,
// apply, hints, gossip, housekeeping and the admin endpoint for one
// PostgreSQL database, wired from one Config.
//
//	cfg := node.DefaultConfig()
//	cfg.Site, cfg.Database.DSN = "a", "postgres://..."
//	n, err := node.New(cfg, logger) // validates cfg
//	err = n.Start(ctx)              // prepares the database, NATS, gossip; fails on bad input
//	defer n.Close()
//	err = n.Run(ctx)                // until ctx is done
//	st := n.Status()                // what /status serves
//
// cmd/casualdb parses flags, YAML and the environment into a Config and
// renders output; everything else lives here and in the packages node
// wires: capture, ship, apply, hint, ring, meta.
package node
