package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of the times in /proc (100 on Linux).
const clockTicks = 100

// cpuGroup is a set of processes whose CPU time is summed: a process and,
// when tree is set, its children (a postmaster and its backends). Children
// that exited and were reaped count through the parent's cutime and cstime.
type cpuGroup struct {
	name string
	pid  int
	tree bool
}

// cpuSample is the CPU time each group had used, plus the machine's busy time.
type cpuSample struct {
	at     time.Time
	groups []float64 // seconds
	busy   float64   // seconds, all CPUs
}

func sampleCPU(groups []cpuGroup) cpuSample {
	s := cpuSample{at: time.Now(), busy: machineBusy()}
	var kids map[int][]int
	for _, g := range groups {
		secs := procSeconds(g.pid, g.tree)
		if g.tree {
			if kids == nil {
				kids = childrenByParent()
			}
			for _, k := range kids[g.pid] {
				secs += procSeconds(k, false)
			}
		}
		s.groups = append(s.groups, secs)
	}
	return s
}

// cpuReport prints how many cores each group used between two samples.
func cpuReport(groups []cpuGroup, before, after cpuSample) []string {
	wall := after.at.Sub(before.at).Seconds()
	if wall <= 0 {
		return nil
	}
	var lines []string
	var accounted float64
	for i, g := range groups {
		used := after.groups[i] - before.groups[i]
		accounted += used
		lines = append(lines, fmt.Sprintf("%-28s %5.2f cores", g.name, used/wall))
	}
	busy := after.busy - before.busy
	lines = append(lines, fmt.Sprintf("%-28s %5.2f cores", "everything else", (busy-accounted)/wall))
	lines = append(lines, fmt.Sprintf("%-28s %5.2f of %d cores", "machine busy", busy/wall, numCPU()))
	return lines
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
