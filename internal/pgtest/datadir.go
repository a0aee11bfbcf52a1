package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// pgHBA lets anyone on loopback TCP in as anyone, including for replication;
// there is no Unix socket.
const pgHBA = `# Written by pgtest on every start.
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
`

// prepare makes the data directory ready to start: created, owned by the
// user postgres runs as, initialised if new, with pgtest's pg_hba.conf.
func (s *Server) prepare(ctx context.Context) error {
	fail := func(err error) error { return fmt.Errorf("prepare postgres %s: %w", s.opts.Name, err) }
	if err := os.MkdirAll(filepath.Dir(s.dataDir), 0o755); err != nil {
		return fail(err)
	}
	if s.owner != nil {
		if err := s.owner.ensureTraversable(filepath.Dir(s.dataDir), s.logf); err != nil {
			return fail(err)
		}
	}
	_, err := os.Stat(filepath.Join(s.dataDir, "PG_VERSION"))
	fresh := errors.Is(err, fs.ErrNotExist)
	if err != nil && !fresh {
		return fail(err)
	}
	if fresh {
		if err := os.Mkdir(s.dataDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fail(err)
		}
		if err := s.chown(s.dataDir); err != nil {
			return fail(err)
		}
		if err := s.initdb(ctx); err != nil {
			return fail(err)
		}
	}
	if err := s.writeFile(filepath.Join(s.dataDir, "pg_hba.conf"), []byte(pgHBA)); err != nil {
		return fail(err)
	}
	return nil
}

// initdb initialises the empty data directory, makes postgresql.conf include
// the file that start rewrites, and begins the log with initdb's output.
func (s *Server) initdb(ctx context.Context) error {
	s.logf("initdb %s", s.dataDir)
	args := []string{"-D", s.dataDir, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-instructions"}
	if !s.opts.Fsync {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(BinDir(), "initdb"), args...)
	cmd.Dir = s.dataDir // initdb needs a readable working directory
	cmd.Env = s.env()
	cmd.SysProcAttr = sysProcAttr(s.owner.credential())
	// initdb runs postgres in bootstrap mode; on cancel, kill them both.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %w; output:\n%s", err, lastLines(string(out), 30))
	}
	if err := s.writeFile(s.logPath, out); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(s.dataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "\n# Added by pgtest, which rewrites %[1]s on every start.\ninclude '%[1]s'\n", confFileName)
	return errors.Join(err, f.Close())
}

// conf returns the contents of casualdb.conf: the defaults, overridden by
// Options.Settings, except for the address and port, which DSN relies on.
func (s *Server) conf() []byte {
	fsync := "off"
	if s.opts.Fsync {
		fsync = "on"
	}
	settings := map[string]string{
		"fsync":                   fsync,
		"log_destination":         "stderr", // the log file is the postmaster's stderr
		"logging_collector":       "off",
		"max_connections":         "100",
		"max_replication_slots":   "10",
		"max_wal_senders":         "10",
		"shared_buffers":          "64MB",
		"synchronous_commit":      "on",
		"track_commit_timestamp":  "off",
		"unix_socket_directories": "", // TCP only
		"wal_level":               "logical",
		"wal_sender_timeout":      "60s",
	}
	maps.Copy(settings, s.opts.Settings)
	settings["listen_addresses"] = "127.0.0.1"
	settings["port"] = strconv.Itoa(s.port)

	var b strings.Builder
	b.WriteString("# Written by pgtest on every start; edits are lost.\n")
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(settings[k], "'", "''"))
	}
	return []byte(b.String())
}

// writeFile writes a file readable only by the user postgres runs as.
func (s *Server) writeFile(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	return s.chown(path)
}

// chown gives path to the user postgres runs as, when that is not us.
func (s *Server) chown(path string) error {
	if s.owner == nil {
		return nil
	}
	return os.Chown(path, s.owner.uid, s.owner.gid)
}

// owner is the unprivileged user initdb and postgres run as when we are root.
type owner struct {
	uid, gid int
	home     string
}

func lookupOwner(name string) (*owner, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("look up user %s: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("look up user %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("look up user %s: gid %q: %w", name, u.Gid, err)
	}
	return &owner{uid: uid, gid: gid, home: u.HomeDir}, nil
}

// credential returns the credential to run child processes with; nil (run
// as ourselves) for a nil owner. Supplementary groups are dropped.
func (o *owner) credential() *syscall.Credential {
	if o == nil {
		return nil
	}
	return &syscall.Credential{Uid: uint32(o.uid), Gid: uint32(o.gid)}
}

// ensureTraversable adds search permission to dir and each of its ancestors
// that o could not otherwise enter: postgres must reach its data directory,
// and t.TempDir, for one, creates mode 0700 directories.
func (o *owner) ensureTraversable(dir string, logf func(string, ...any)) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("stat %s: no owner information", d)
		}
		var bit fs.FileMode
		switch {
		case int(st.Uid) == o.uid:
			bit = 0o100
		case int(st.Gid) == o.gid:
			bit = 0o010
		default:
			bit = 0o001
		}
		if fi.Mode()&bit == 0 {
			mode := fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) | bit
			logf("chmod %s %v so that postgres can reach its data directory", d, mode)
			if err := os.Chmod(d, mode); err != nil {
				return err
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
