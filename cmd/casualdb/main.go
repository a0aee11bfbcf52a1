// Command casualdb is the CasualDB sidecar: it runs beside one PostgreSQL
// and makes it one site of an active-active, eventually consistent cluster.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/node"
)

func main() {
	if os.Getenv("GOGC") == "" {
		// The sidecar allocates a little for every transaction it passes
		// on and keeps little alive: collecting at 3x the live heap instead
		// of 2x halves the collector's CPU for a few tens of MB more.
		debug.SetGCPercent(200)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel() // first signal: drain
		<-sigs
		os.Exit(130) // second: abort
	}()
	m := NewMain()
	if err := m.Run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "casualdb:", err)
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, casualdb.ErrConfig) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// Main is the command line.
type Main struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

// NewMain returns a Main on the process's streams and environment.
func NewMain() *Main { return &Main{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv} }

const usage = `casualdb: active-active replication for PostgreSQL

Usage:
  casualdb run --config FILE [flags]     run the sidecar
  casualdb uninstall --config FILE       remove slot, publication, origins and the casualdb schema
  casualdb setup-role --config FILE [--role NAME] [--superuser-dsn DSN] [--apply]
                                         the SQL that lets a role that is not a superuser run the
                                         sidecar (--apply runs it, as a superuser)
  casualdb conflicts --config FILE [--since DURATION] [--table NAME] [--limit N] [--json]
                                         list recent conflicts from the conflict log, newest first
  casualdb parked --config FILE [--table NAME] [--limit N] [--json]
                                         list the changes apply could not apply, newest first
  casualdb parked discard --config FILE ID...
                                         delete parked entries (all or, if one is unknown, none)
  casualdb parked replay --config FILE ID...
                                         write parked changes here as new local writes (they
                                         replicate) and unpark each one written
  casualdb status [--config FILE | --admin HOST:PORT] [--json]
                                         the running sidecar: health, peers and their lag, the
                                         cluster as gossip sees it
  casualdb check [--config FILE | --admin HOST:PORT] [--table NAME]... [--repair] [--json]
                                         compare the replicated tables across the live sites
                                         (the running sidecar asks its peers); exit 1 if rows differ;
                                         --repair writes the winning rows again, which replicate
  casualdb certs --site NAME... [--host SITE=HOST]... [--dir DIR]
                                         a development CA and a certificate per site (nats.tls)
  casualdb demo                          three local sites converging, on embedded defaults
  casualdb version

Run "casualdb COMMAND -h" for a command's flags.
`

// Run runs the subcommand named by args[0].
func (m *Main) Run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(m.Stderr, usage)
		return fmt.Errorf("%w: no command", flag.ErrHelp)
	}
	switch args[0] {
	case "run":
		return m.runCmd(ctx, args[1:])
	case "uninstall":
		return m.uninstallCmd(ctx, args[1:])
	case "setup-role":
		return m.setupRoleCmd(ctx, args[1:])
	case "conflicts":
		return m.conflictsCmd(ctx, args[1:])
	case "parked":
		return m.parkedCmd(ctx, args[1:])
	case "status":
		return m.statusCmd(ctx, args[1:])
	case "check":
		return m.checkCmd(ctx, args[1:])
	case "certs":
		return m.certsCmd(ctx, args[1:])
	case "demo":
		return m.demoCmd(ctx, args[1:])
	case "version":
		fmt.Fprintln(m.Stdout, "casualdb", Version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(m.Stdout, usage)
		return nil
	}
	fmt.Fprint(m.Stderr, usage)
	return fmt.Errorf("%w: unknown command %q", flag.ErrHelp, args[0])
}

// Version is set at build time.
var Version = "dev"

// configFlags are the flags that override the main configuration keys.
type configFlags struct {
	path                                             string
	site, dsn, dataDir, natsListen, natsURL, adminAt string
	peers                                            string
	tables                                           string
}

func (f *configFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.path, "config", "", "YAML configuration file")
	fs.StringVar(&f.site, "site", "", "this site's name (site)")
	fs.StringVar(&f.dsn, "dsn", "", "local PostgreSQL connection string (database.dsn)")
	fs.StringVar(&f.dataDir, "data-dir", "", "data directory (data_dir)")
	fs.StringVar(&f.natsListen, "nats-listen", "", "embedded NATS listen address (nats.listen)")
	fs.StringVar(&f.natsURL, "nats-url", "", "existing NATS to use instead of the embedded one (nats.url)")
	fs.StringVar(&f.adminAt, "admin-listen", "", "admin HTTP listen address (admin.listen)")
	fs.StringVar(&f.peers, "peers", "", "peers as name=nats://host:port,... (peers)")
	fs.StringVar(&f.tables, "tables", "", "replicated tables, comma-separated (database.tables)")
}

// load reads the file, then the environment, then the flags, and validates.
func (f *configFlags) load(getenv func(string) string) (node.Config, error) {
	cfg, err := node.LoadConfig(f.path)
	if err != nil {
		return cfg, err
	}
	if err := cfg.ApplyEnv(getenv); err != nil {
		return cfg, err
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.Site, f.site)
	set(&cfg.Database.DSN, f.dsn)
	set(&cfg.DataDir, f.dataDir)
	set(&cfg.NATS.Listen, f.natsListen)
	set(&cfg.NATS.URL, f.natsURL)
	set(&cfg.Admin.Listen, f.adminAt)
	if f.peers != "" {
		if cfg.Peers, err = node.ParsePeers(strings.Split(f.peers, ",")); err != nil {
			return cfg, err
		}
	}
	if f.tables != "" {
		cfg.Database.Tables = strings.Split(f.tables, ",")
	}
	return cfg, cfg.Validate()
}

func newLogger(w io.Writer, cfg node.LogConfig) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// parseConfig parses a subcommand's flags and loads its configuration.
// Each extra function registers the subcommand's own flags on the set.
func (m *Main) parseConfig(name string, args []string, extra ...func(*flag.FlagSet)) (node.Config, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	var cf configFlags
	cf.register(fs)
	for _, f := range extra {
		f(fs)
	}
	if err := fs.Parse(args); err != nil {
		return node.Config{}, err
	}
	return cf.load(m.Getenv)
}
