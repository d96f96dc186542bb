// Package nsmount mounts NFS inside a container's own network and mount
// namespaces: the mount core, with nothing about policies, registries or
// runtimes.
//
// A Target pins a container's namespaces by descriptor (OpenPID,
// OpenPIDRootfs, OpenPaths, OpenNetNS); only code inside Target.Do runs in
// them: on an OS thread that is never returned to the Go scheduler when it
// enters a mount namespace, on a pooled thread that goes back to its own
// network namespace (and only then to the pool) when it enters the network
// namespace alone. A mount is a decision and then its execution, both
// plain:
//
//	plan, err := nsmount.Explain(ctx, t, req) // resolve, route, check: no side effect
//	m, err := nsmount.MountPlan(ctx, t, plan) // the kernel mounts, from t's netns
//
// Explain checks everything that needs no network first (source, options,
// the mount point inside the container's root), then resolves the server as
// the container would (package routing/resolver), asks the container's
// routing table (package routing) and checks the server from there. The
// Plan it returns can be printed (`nsmount route`), checked (a policy's
// admission, stale client state) and recorded by the caller before
// MountPlan carries it out. ReplacePlan swaps a mount in place, Unmount,
// UnmountID and ProbeMount act on mounts, List shows them.
//
// Everything that can block on an NFS server runs in a helper process (this
// binary re-executed, see RunHelper), killed at its deadline: a hung server
// never hangs the caller. The new superblock is verified to belong to the
// target's network namespace before it is attached. Errors carry one class
// (ErrInvalidArgument, ErrUnreachable, ...; ExitCode maps them) and, when
// there is one, the errno, also across the helper's pipe.
package nsmount
