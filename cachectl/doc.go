// Package cachectl is nsmount's orchestrator: the Manager carries out every
// command about NFS mounts in containers (Mount, Unmount, Remount, Flush,
// Status, Watch, Teardown), asking each lower layer for data and deciding
// with it: the mount core (nsmount) for plans and mounts, the policy's
// admission for what a mount may reach, the kernel observation
// (cachectl/kernel) for NFS client state, and the registry
// (cachectl/registry) for what nsmount made.
//
// The Linux NFS client keeps state beyond one mount: a superblock lives on
// while anything holds it (a copy of the mount propagated into another mount
// namespace, a lazy unmount with an open file), and a new mount of the same
// server and export in the same network namespace shares it (sharecache),
// with its nfs_client: the old connection, route, callback address and
// client identity. nosharecache is no cure (the nfs_client is still shared);
// what flushes is removing the last holder of the old superblock, after which
// the kernel frees the client at once. So before a mount, the Manager looks
// for superblocks of the same server in the target's network namespace that
// no live nsmount mount accounts for (stale), and flushes, refuses or shares
// them as told.
//
// A mount walks down and its results come back up:
//
//	plan   := nsmount.Explain(target, request)      resolve, route, check: data
//	err    := admission.Allows(plan.Address)        the policy, on the address
//	lock (network namespace, server address)        across nsmount processes
//	stale  := what the kernel and the registry show  only this netns, read more only if needed
//	flush(stale)                                    unmount copies; kill or shut down only if told
//	m      := nsmount.MountPlan(target, plan)       helper: fsopen in the netns, verify, attach
//	registry.Put(entry{plan, m, admission})         then unlock
//
// Every later decision about the mount (Remount, Watch) starts from its
// registry entry and checks the recorded admission again before anything
// moves.
package cachectl
