// Package cachectl keeps nsmount's record of the mounts it made and finds
// and flushes the NFS client state that outlives a mount.
//
// The Linux NFS client keeps state beyond one mount: a superblock lives on
// while anything holds it (a copy of the mount propagated into another mount
// namespace, a lazy unmount with an open file), and a new mount of the same
// server and export in the same network namespace shares it (sharecache),
// with its nfs_client: the old connection, route, callback address and
// client identity. nosharecache is no cure (the nfs_client is still shared);
// what flushes is removing the last holder of the old superblock, after which
// the kernel frees the client at once.
//
// A Registry records every mount (target namespaces, server, address,
// route, superblock device) under /run/nsmount, under a file lock and with
// atomic replacement; a corrupt file is set aside and rebuilt from
// mountinfo. A World is one observation of the kernel (every mount
// namespace's NFS mounts, every network namespace's NFS superblocks and
// clients from /proc/PID/net/nfsfs); against the registry it tells which
// superblocks are stale and who holds them. Manager puts both behind the
// commands: Mount (refusing or flushing stale state of the same server
// first), Unmount, Status, Flush, Remount and Watch.
package cachectl
