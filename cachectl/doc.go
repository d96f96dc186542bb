// Package cachectl will hold nsmount's state registry and the detection and
// flushing of stale kernel NFS client state (superblocks kept alive by a
// propagated copy or a lazy unmount, nfs_client structures per netns and
// server address, NFSv4 client identities).
//
// It is deliberately empty until that work lands: the mount path in package
// nsmount already verifies every new superblock against the target netns's
// /proc/net/nfsfs/volumes, which is the check the registry will build on.
package cachectl
