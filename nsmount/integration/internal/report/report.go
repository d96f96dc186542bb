// Package report turns what the Manager did for an integration (a mount, a
// teardown, its own notices) into lines for people: one event per line, in
// the texts the OCI hook, the CNI plugin and the NRI plugin have always
// printed, so that the three describe the same things the same way.
package report

import (
	"fmt"
	"strings"

	"github.com/nsmount/nsmount/cachectl"
)

// OneLine joins s onto one line (the kernel's and the runtimes' messages
// may span several).
func OneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Mounted describes a mount made: "mounted SOURCE on TARGET (nfs VERSION,
// dev DEV, address ADDR, route ROUTE)", after the lines of the stale state
// flushed first and the Manager's warnings.
func Mounted(res *cachectl.MountResult) []string {
	var lines []string
	lines = append(lines, Flush(res.Flushed)...)
	for _, w := range res.Warnings {
		lines = append(lines, OneLine(w))
	}
	if m := res.Mounted; m != nil {
		lines = append(lines, OneLine(fmt.Sprintf("mounted %s on %s (nfs %s, dev %s, address %s, route %s)", m.Source, m.Target, m.Version, m.Dev, m.Address, m.Route)))
	}
	return lines
}

// Flush describes a flush: the entries found gone, each action done, and
// the superblocks flushed.
func Flush(rep *cachectl.FlushReport) []string {
	if rep == nil {
		return nil
	}
	var lines []string
	for _, g := range rep.Gone {
		lines = append(lines, OneLine(fmt.Sprintf("forgot %s at %s: %s", g.Entry.Source, g.Entry.Mountpoint, g.Why)))
	}
	for _, a := range rep.Actions {
		lines = append(lines, OneLine("did: "+a.String()))
	}
	for _, n := range rep.Notes {
		lines = append(lines, OneLine(n))
	}
	return lines
}

// Teardown describes a teardown: the entries forgotten, the mounts
// unmounted, the flushes, and the warnings ("warning: ...").
func Teardown(rep *cachectl.TeardownReport) []string {
	if rep == nil {
		return nil
	}
	var lines []string
	for _, g := range rep.Forgotten {
		lines = append(lines, OneLine(fmt.Sprintf("forgot %s at %s: %s", g.Entry.Source, g.Entry.Mountpoint, g.Why)))
	}
	for _, e := range rep.Unmounted {
		lines = append(lines, OneLine(fmt.Sprintf("unmounted %s at %s, left by the container", e.Source, e.Mountpoint)))
	}
	for _, f := range rep.Flushes {
		lines = append(lines, Flush(f)...)
	}
	for _, w := range rep.Warnings {
		lines = append(lines, Warning(w))
	}
	return lines
}

// Warning formats a warning line: "warning: TEXT".
func Warning(s string) string { return "warning: " + OneLine(s) }

// Notices formats what the Manager noticed on its own (a corrupt registry
// rebuilt) as warnings.
func Notices(m *cachectl.Manager) []string {
	var lines []string
	for _, n := range m.Notices() {
		lines = append(lines, Warning(n))
	}
	return lines
}
