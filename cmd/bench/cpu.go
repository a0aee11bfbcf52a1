package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of the times in /proc (100 on Linux).
const clockTicks = 100

// procClass is what a PostgreSQL process does, by pg_stat_activity.
type procClass int

const (
	// classOther: the postmaster's own helpers (checkpointer, autovacuum,
	// walwriter, ...), and processes pg_stat_activity did not list.
	classOther procClass = iota
	// classWorkload: a backend of pgbench or of the bench itself.
	classWorkload
	// classWalsender: a walsender, decoding WAL for a replicator.
	classWalsender
	// classApply: a replicator's worker inside PostgreSQL: pglogical's
	// background workers, and every client backend that is neither pgbench's
	// nor the bench's (casualdb's sidecar connections, named casualdb-* or
	// not named at all).
	classApply
)

// isReplication reports whether c's CPU is the replicator's.
func (c procClass) isReplication() bool { return c == classWalsender || c == classApply }

// classify tells what the backend with backendType and applicationName
// does.
func classify(backendType, applicationName string) procClass {
	switch {
	case backendType == "walsender":
		return classWalsender
	case strings.HasPrefix(backendType, "pglogical"):
		return classApply
	case backendType != "client backend":
		return classOther
	case applicationName == benchApp || applicationName == pgbenchApp:
		return classWorkload
	default:
		return classApply
	}
}

// classes maps a server's process ids to what they do.
type classes map[int]procClass

// add classifies every backend of bs; a pid seen before keeps its first
// class unless it was unclassified.
func (cs classes) add(bs []backend) {
	for _, b := range bs {
		if old, ok := cs[b.pid]; !ok || old == classOther {
			cs[b.pid] = classify(b.backendType, b.appName)
		}
	}
}

// cpuSnapshot is the CPU time, in seconds, used so far by each sidecar, each
// PostgreSQL server and each of its processes, and the whole machine.
type cpuSnapshot struct {
	at       time.Time
	busy     float64           // the machine, all CPUs
	self     float64           // the bench's own process
	sidecars []float64         // by site
	servers  []float64         // by site: the postmaster and every child
	procs    []map[int]float64 // by site: each live child of the postmaster
}

// takeSnapshot reads /proc for the given sidecars and postmasters.
func takeSnapshot(sidecars, postmasters []int) cpuSnapshot {
	s := cpuSnapshot{at: time.Now(), busy: machineBusy(), self: procSeconds(os.Getpid(), false)}
	for _, pid := range sidecars {
		s.sidecars = append(s.sidecars, procSeconds(pid, false))
	}
	kids := childrenByParent()
	for _, pm := range postmasters {
		// Children that exited and were reaped count through the
		// postmaster's cutime and cstime.
		total := procSeconds(pm, true)
		procs := map[int]float64{}
		for _, k := range kids[pm] {
			procs[k] = procSeconds(k, false)
			total += procs[k]
		}
		s.servers = append(s.servers, total)
		s.procs = append(s.procs, procs)
	}
	return s
}

// cpuUse is the CPU seconds used between two snapshots.
type cpuUse struct {
	wall       float64   // seconds between the snapshots
	machine    float64   // every CPU's busy time
	sidecars   []float64 // by site; none for pglogical
	servers    []float64 // by site: the whole PostgreSQL server
	walsenders []float64 // by site: its walsenders
	apply      []float64 // by site: pglogical's workers or the sidecar's backends
	bench      float64   // the bench's own process (probes, digests)
	pgbench    float64   // the pgbench process (set by the caller: pgbench is not running at either snapshot)
}

// cpuBetween computes the use between before and after, with each server's
// processes classified by cls (by site). A replication process that exited
// between the snapshots is missed (its time went to the postmaster's); one
// that started after before counts from zero.
func cpuBetween(before, after cpuSnapshot, cls []classes) cpuUse {
	u := cpuUse{wall: after.at.Sub(before.at).Seconds(), machine: after.busy - before.busy, bench: after.self - before.self}
	for i := range after.sidecars {
		u.sidecars = append(u.sidecars, after.sidecars[i]-before.sidecars[i])
	}
	for i := range after.servers {
		u.servers = append(u.servers, after.servers[i]-before.servers[i])
		var ws, ap float64
		for pid, secs := range after.procs[i] {
			var class procClass
			if i < len(cls) {
				class = cls[i][pid]
			}
			if !class.isReplication() {
				continue
			}
			used := secs - before.procs[i][pid] // zero when it started since
			if class == classWalsender {
				ws += used
			} else {
				ap += used
			}
		}
		u.walsenders = append(u.walsenders, ws)
		u.apply = append(u.apply, ap)
	}
	return u
}

func sum(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s
}

// replicators returns the CPU seconds of everything that replicates: the
// sidecars and the replication processes inside PostgreSQL.
func (u cpuUse) replicators() float64 { return sum(u.sidecars) + sum(u.walsenders) + sum(u.apply) }

// system returns the CPU seconds of the sidecars and the PostgreSQL servers
// together: the machine less pgbench, the bench and the rest.
func (u cpuUse) system() float64 { return sum(u.sidecars) + sum(u.servers) }

// others returns the CPU seconds of the processes that are not this
// benchmark's: on a shared machine, the noise in every figure.
func (u cpuUse) others() float64 { return u.machine - u.system() - u.bench - u.pgbench }

// cpuWindow measures one scenario's CPU: snapshots at its start and end, and
// the classes of each server's processes read at both.
type cpuWindow struct {
	sidecars []int
	before   cpuSnapshot
	cls      []classes
}

// startCPU classifies every server's processes and takes the first snapshot.
func startCPU(ctx context.Context, c *cluster, sidecars []int) (*cpuWindow, error) {
	w := &cpuWindow{sidecars: sidecars}
	if err := w.classify(ctx, c); err != nil {
		return nil, err
	}
	w.before = takeSnapshot(sidecars, c.pids())
	return w, nil
}

// classify reads pg_stat_activity at every site into w.cls.
func (w *cpuWindow) classify(ctx context.Context, c *cluster) error {
	for i := range c.servers {
		if i == len(w.cls) {
			w.cls = append(w.cls, classes{})
		}
		bs, err := c.activity(ctx, i)
		if err != nil {
			return err
		}
		w.cls[i].add(bs)
	}
	return nil
}

// stop takes the second snapshot, reads the classes again to learn the
// processes that started meanwhile, and returns the use.
func (w *cpuWindow) stop(ctx context.Context, c *cluster) (cpuUse, error) {
	after := takeSnapshot(w.sidecars, c.pids())
	if err := w.classify(ctx, c); err != nil {
		return cpuUse{}, err
	}
	return cpuBetween(w.before, after, w.cls), nil
}

// procSeconds reads utime+stime of pid (plus cutime+cstime when withReaped).
func procSeconds(pid int, withReaped bool) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// After the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
	if len(f) < 15 {
		return 0
	}
	n := 2
	if withReaped {
		n = 4
	}
	var ticks float64
	for _, v := range f[11 : 11+n] {
		t, _ := strconv.ParseFloat(v, 64)
		ticks += t
	}
	return ticks / clockTicks
}

func childrenByParent() map[int][]int {
	out := map[int][]int{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		out[ppid] = append(out[ppid], pid)
	}
	return out
}

// machineBusy is the non-idle CPU time of all CPUs from /proc/stat.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest times are already in user
			break
		}
		t, _ := strconv.ParseFloat(v, 64)
		busy += t
	}
	return busy / clockTicks
}
