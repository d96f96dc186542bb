package testenv

import "time"

// LabWith returns a copy of l (sharing its VM bound) whose runs time out
// after timeout and that calls started, if not nil, with each qemu's PID.
func LabWith(l *Lab, timeout time.Duration, started func(pid int)) *Lab {
	c := *l
	c.cfg.Timeout = timeout
	c.started = started
	return &c
}
