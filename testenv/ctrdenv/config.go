package ctrdenv

// What a private daemon is made of: ContainerdConfig, the binaries it
// names, and the config.toml written from it (version 2, or 3 with CRI).

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// ContainerdConfig configures a private containerd. The zero value uses the
// binaries found in $PATH.
type ContainerdConfig struct {
	// Containerd, Shim and Runc are the paths of the containerd,
	// containerd-shim-runc-v2 and runc binaries; "" looks each up in $PATH.
	// The shim is found by the daemon through its $PATH, so its directory is
	// put first there.
	Containerd, Shim, Runc string
	// Busybox is a static busybox, the whole image; "" looks "busybox" up in
	// $PATH.
	Busybox string
	// Prefix starts the name of the temporary directory (under TempRoot),
	// the containerd namespace and the cgroup parent; "" means "nsmount-ctrd".
	// Keep it short: the daemon's socket path must stay under 108 bytes.
	Prefix string
	// TempRoot is where the temporary directory is made; "" means /tmp.
	TempRoot string
	// Snapshotter is the snapshotter that unpacks the image and makes
	// container root filesystems; "" means "native" (plain copies: works on
	// any filesystem, and the image is one 2 MB binary).
	Snapshotter string
	// ReadyTimeout bounds the wait for the daemon to serve; 0 means 20s.
	ReadyTimeout time.Duration
	// NetNS is the path of a network namespace to run the daemon in, and
	// with it its shims, hooks and CNI plugins (a bridge that CNI makes is
	// made there); "" means the caller's.
	NetNS string
	// CRI, if set, enables the CRI plugin (and NRI). It needs a containerd
	// 2.x daemon (see Containerd2): the configuration is then version 3.
	CRI *CRIConfig
}

// CRIConfig enables containerd's CRI plugin with private directories.
// The pod sandbox ("pause") image is a busybox image whose command sleeps
// forever; it and the busybox image are imported into the k8s.io
// namespace at start, so nothing is pulled.
type CRIConfig struct {
	// CNIBinDir and CNIConfDir are the CNI plugin directory (bridge,
	// host-local, loopback, ...) and the network configuration directory.
	CNIBinDir, CNIConfDir string
	// NRISocket, if set, enables NRI with its socket at this path; plugins
	// connect to it. Pre-registered plugins are looked for in Dir/nri.
	NRISocket string
}

// program is a binary of ContainerdConfig: its path (empty: look up name).
type program struct {
	path *string
	name string
}

// findBinaries resolves each program's path, or its name when the path is
// empty, in $PATH.
func findBinaries(progs ...program) error {
	for _, b := range progs {
		if *b.path == "" {
			*b.path = b.name
		}
		p, err := exec.LookPath(*b.path)
		if err != nil {
			return fmt.Errorf("find %s: %w", b.name, err)
		}
		*b.path = p
	}
	return nil
}

// config is the daemon's configuration: version 2, which containerd 1.6,
// 1.7 and 2.x read. Plugins that would touch host paths (/opt/containerd) or
// are not needed are disabled; CRI above all.
func (c *Containerd) config() string {
	if c.cfg.CRI != nil {
		return c.criConfig()
	}
	q := strconv.Quote
	return fmt.Sprintf(`version = 2
root = %s
state = %s
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = %s

[ttrpc]
  address = %s

[debug]
  level = "info"
`, q(filepath.Join(c.Dir, "root")), q(filepath.Join(c.Dir, "state")), q(c.Address), q(c.Address+".ttrpc"))
}

// criConfig is the configuration of a containerd 2.x daemon with CRI and
// NRI: version 3, every path under c.Dir (pod netns mounts and shim sockets
// too), the native snapshotter, runc with its private root, the pause
// stand-in as sandbox image, and CNI from the configured directories.
func (c *Containerd) criConfig() string {
	q := strconv.Quote
	cri := c.cfg.CRI
	nri := "  disable = true\n"
	if cri.NRISocket != "" {
		nri = fmt.Sprintf(`  disable = false
  socket_path = %s
  plugin_path = %s
  plugin_config_path = %s
`, q(cri.NRISocket), q(filepath.Join(c.Dir, "nri", "plugins")), q(filepath.Join(c.Dir, "nri", "conf.d")))
	}
	return fmt.Sprintf(`version = 3
root = %s
state = %s
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  "io.containerd.image-verifier.v1.bindir",
]

[grpc]
  address = %s

[ttrpc]
  address = %s

[debug]
  level = "info"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = %s
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %s

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      snapshotter = %s
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = %s
        Root = %s
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%s]
    conf_dir = %s
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = %s

[plugins."io.containerd.nri.v1.nri"]
%s`, q(filepath.Join(c.Dir, "root")), q(filepath.Join(c.Dir, "state")), q(c.Address), q(c.Address+".ttrpc"),
		q(c.cfg.Snapshotter), q(PauseImageName), q(c.cfg.Snapshotter), q(c.cfg.Runc), q(c.runcRoot),
		q(cri.CNIBinDir), q(cri.CNIConfDir), q(filepath.Join(c.Dir, "s")), nri)
}
