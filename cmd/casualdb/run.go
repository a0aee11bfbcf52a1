package main

import (
	"context"

	"github.com/casualdb/casualdb/node"
)

// runCmd runs the sidecar until ctx is done.
func (m *Main) runCmd(ctx context.Context, args []string) error {
	cfg, err := m.parseConfig("run", args)
	if err != nil {
		return err
	}
	log := newLogger(m.Stderr, cfg.Log)
	s, err := node.New(cfg, log)
	if err != nil {
		return err
	}
	if err := s.Start(ctx); err != nil {
		return err
	}
	defer s.Close()
	return s.Run(ctx)
}
