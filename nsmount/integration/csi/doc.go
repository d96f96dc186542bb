// Package csi is nsmount's CSI node plugin, driver nfs.nsmount.io: it
// mounts a pod's NFS volumes from the pod's own network namespace (its
// routes, its DNS, its address), onto kubelet's target paths in the host's
// mount namespace, through the Manager (cachectl), under the host policy
// (admission.Policy.CheckCSI).
//
// Kubelet calls NodePublishVolume before the pod's sandbox, and so its
// network namespace, exists. So publishing is deferred: NodePublishVolume
// validates the request (untrusted: any pod author writes inline volumes),
// asks the policy, records the volume durably under the state directory
// (one file per target path), creates the target directory and returns.
// The mount is made when the sandbox is ready: the runtime integration
// calls Service.PodSandboxReady (from NRI's RunPodSandbox, which comes
// before CreateContainer, so the containers' bind mounts of the target see
// the NFS mount), with the sandbox's network namespace and process. A pod
// whose sandbox runs already (a republish, a restart of the service) is
// mounted at once, its sandbox known from an earlier PodSandboxReady or
// found by the pod's UID in the processes' cgroups (FindSandbox). A new
// sandbox of the same pod (a new network namespace) gets its mounts redone
// from it. When the sandbox stops, after the pod's containers and before
// its network is torn down (NRI's StopPodSandbox), Service.PodSandboxStopping
// unmounts the pod's mounts while their server can still be reached from
// its network, and the volumes go back to pending. NodeUnpublishVolume
// unmounts what is left (lazily, when the pod's network namespace is gone
// and the server can no longer be told), flushes what the mount leaves in
// the kernel's NFS client, removes the record and the target directory,
// and succeeds again and again.
// NodeGetVolumeStats and NodeGetVolumeHealth probe through the mount in a
// helper process killed at its deadline: a hung server costs the
// timeout, never a hung call.
//
// The gRPC server and the CSI spec's bindings live in this package and in
// the command that serves it, never in the mount core.
package csi
