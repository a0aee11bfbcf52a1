package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// The pinned measurement separates the origin from everything else: site
// a's PostgreSQL (with the walsenders that decode its WAL) and pgbench run
// on CPU 0, the peers' PostgreSQL servers and every sidecar on CPU 1. Its
// cost figure is what replicating costs the origin's PostgreSQL, as on a
// deployment where the peers are other machines and the sidecar container
// has a CPU of its own; the shared-core figure is the other extreme, where
// three sites and their sidecars fight for two cores.

// canPin reports whether the machine has the two CPUs the pinned
// measurement needs.
func canPin() bool { return numCPU() >= 2 }

// pin puts site a's PostgreSQL on CPU 0 and the peers' servers and the
// given sidecar processes on CPU 1; unpin (pinned false) lets every one of
// them run anywhere again.
func (c *cluster) pin(pinned bool) error {
	all := unix.CPUSet{}
	for i := 0; i < numCPU(); i++ {
		all.Set(i)
	}
	one := func(cpu int) unix.CPUSet {
		if !pinned {
			return all
		}
		var s unix.CPUSet
		s.Set(cpu)
		return s
	}
	kids := childrenByParent()
	for i, s := range c.servers {
		cpu := 1
		if i == 0 {
			cpu = 0
		}
		set := one(cpu)
		pids := append([]int{s.PID()}, kids[s.PID()]...)
		for _, pid := range pids {
			if err := setAffinity(pid, &set); err != nil {
				return fmt.Errorf("pin postgres %c: %w", 'a'+i, err)
			}
		}
	}
	for _, pid := range c.pids {
		set := one(1)
		if err := setAffinity(pid, &set); err != nil {
			return fmt.Errorf("pin sidecar %d: %w", pid, err)
		}
	}
	return nil
}

// setAffinity sets the CPU mask of every thread of pid. A process that
// exited meanwhile (a backend) is not an error.
func setAffinity(pid int, set *unix.CPUSet) error {
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return nil
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
			return fmt.Errorf("thread %d: %w", tid, err)
		}
	}
	return nil
}
