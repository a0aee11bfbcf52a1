package main

import (
	"math"
	"os"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		backendType, app string
		want             procClass
	}{
		{"walsender", "", classWalsender},
		{"walsender", "b_from_a", classWalsender},
		{"pglogical apply 13427:1763505011", "", classApply},
		{"pglogical manager 13427", "", classApply},
		{"pglogical supervisor", "", classApply},
		{"client backend", "casualdb-apply-a", classApply},
		{"client backend", "casualdb-capture-nudge", classApply},
		{"client backend", "", classApply}, // a sidecar connection without a name
		{"client backend", "pgbench", classWorkload},
		{"client backend", "bench", classWorkload},
		{"autovacuum worker", "", classOther},
		{"checkpointer", "", classOther},
		{"logical replication launcher", "", classOther},
	} {
		if got := classify(tc.backendType, tc.app); got != tc.want {
			t.Errorf("classify(%q, %q) = %v, want %v", tc.backendType, tc.app, got, tc.want)
		}
	}
}

func TestClasses_Add(t *testing.T) {
	cs := classes{}
	cs.add([]backend{{pid: 1, backendType: "walsender"}, {pid: 2, backendType: "client backend", appName: "pgbench"}})
	// A pid listed again keeps its class; a new one is added.
	cs.add([]backend{{pid: 1, backendType: "client backend", appName: "pgbench"}, {pid: 3, backendType: "client backend"}})
	want := classes{1: classWalsender, 2: classWorkload, 3: classApply}
	for pid, c := range want {
		if cs[pid] != c {
			t.Errorf("pid %d: class %v, want %v", pid, cs[pid], c)
		}
	}
}

func TestCPUBetween(t *testing.T) {
	at := time.Unix(0, 0)
	before := cpuSnapshot{at: at, busy: 100,
		sidecars: []float64{10, 20},
		servers:  []float64{50, 60},
		procs: []map[int]float64{
			{11: 1, 12: 2, 13: 3, 14: 4}, // walsender, pgbench, autovacuum, exits
			{21: 5},                      // sidecar backend
		},
	}
	after := cpuSnapshot{at: at.Add(10 * time.Second), busy: 118,
		sidecars: []float64{13, 21},
		servers:  []float64{58, 63},
		procs: []map[int]float64{
			{11: 2.5, 12: 6, 13: 3.5, 15: 0.25}, // 15: a walsender that started since
			{21: 6.5, 22: 1},                    // 22: not classified
		},
	}
	cls := []classes{
		{11: classWalsender, 12: classWorkload, 13: classOther, 14: classApply, 15: classWalsender},
		{21: classApply},
	}
	u := cpuBetween(before, after, cls)
	approx := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	approx("wall", u.wall, 10)
	approx("machine", u.machine, 18)
	approx("sidecar a", u.sidecars[0], 3)
	approx("sidecar b", u.sidecars[1], 1)
	approx("server a", u.servers[0], 8)
	approx("server b", u.servers[1], 3)
	approx("walsenders at a", u.walsenders[0], 1.75)
	approx("apply at a", u.apply[0], 0) // 14 exited: missed
	approx("apply at b", u.apply[1], 1.5)
	approx("replicators", u.replicators(), 3+1+1.75+1.5)
	approx("sidecars + servers", u.system(), 3+1+8+3)

	t.Run("no classes", func(t *testing.T) {
		u := cpuBetween(before, after, nil)
		approx("walsenders at a", u.walsenders[0], 0)
		approx("server a", u.servers[0], 8)
	})
}

func TestProcSeconds(t *testing.T) {
	// A pid that cannot exist has used no CPU; this process some or none.
	if s := procSeconds(os.Getpid(), true); s < 0 {
		t.Errorf("procSeconds(self) = %v, want >= 0", s)
	}
	if s := procSeconds(1<<30, false); s != 0 {
		t.Errorf("procSeconds of a missing pid = %v, want 0", s)
	}
	if machineBusy() <= 0 {
		t.Error("machineBusy() <= 0")
	}
}
