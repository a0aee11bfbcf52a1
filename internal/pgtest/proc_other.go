//go:build unix && !linux

package pgtest

import "syscall"

// sysProcAttr runs a child in its own process group, as cred (nil: as
// ourselves).
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}

// alive reports whether pid exists, zombies included.
func alive(pid int) bool { return syscall.Kill(pid, 0) != syscall.ESRCH }

// stopped cannot tell without /proc; it reports true.
func stopped(pid int) bool { return true }

// children cannot list them without /proc; it returns nil, so Kill leaves
// the backends to notice the postmaster's death by themselves.
func children(pid int) []int { return nil }
