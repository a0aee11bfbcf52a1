package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/casualdb/casualdb/internal/demo"
)

func (m *Main) demoCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	keep := fs.Bool("keep", false, "keep the demo's directory (databases, logs) instead of removing it")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait for the sites to converge")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "casualdb-demo-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	logFile, err := os.Create(filepath.Join(dir, "sidecars.log"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer logFile.Close()
	err = demo.Run(ctx, m.Stdout, dir, slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo})), *timeout)
	if *keep {
		fmt.Fprintf(m.Stdout, "The demo's directory is kept: %s (sidecar logs in sidecars.log).\n", dir)
	}
	return err
}
