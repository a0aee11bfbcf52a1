package pgtest

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// sysProcAttr runs a child in its own process group, as cred (nil: as
// ourselves). The kernel sends it SIGKILL if the thread that started it
// exits, so a postmaster dies with a test binary that is killed; its backends
// then notice and exit by themselves. Go sets Pdeathsig after changing
// credentials, which would otherwise clear it.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
}

// procStat returns the state and parent PID of pid from /proc/pid/stat;
// ok is false if pid does not exist.
func procStat(pid int) (state string, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	// "pid (comm) state ppid ...", where comm may contain anything.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 2 {
		return "", 0, false
	}
	ppid, _ = strconv.Atoi(fields[1])
	return fields[0], ppid, true
}

// alive reports whether pid exists and is not a zombie. Orphaned backends
// are reparented to PID 1, which may be slow to reap them or never do.
func alive(pid int) bool {
	state, _, ok := procStat(pid)
	return ok && state != "Z" && state != "X"
}

// stopped reports whether pid is stopped by a signal, or gone.
func stopped(pid int) bool {
	state, _, ok := procStat(pid)
	return !ok || state == "T"
}

// children returns the PIDs of pid's children.
func children(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, ok := procStat(child); ok && ppid == pid {
			kids = append(kids, child)
		}
	}
	return kids
}
