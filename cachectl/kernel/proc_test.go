package kernel_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/kernel"
	"github.com/nsmount/nsmount/cachectl/kernel/kerneltest"
	"github.com/nsmount/nsmount/nsmount"
	"golang.org/x/sys/unix"
)

func TestParseVolumes(t *testing.T) {
	v4 := netip.MustParseAddr("198.51.100.1")
	v6 := netip.MustParseAddr("2001:db8::1")
	tests := []struct {
		name    string
		text    string
		want    []kernel.Volume
		wantErr string // substring; "" = no error
	}{
		{
			name: "real kernel v3 and v4, IPv4 and IPv6",
			text: kerneltest.RealVolumes,
			want: []kernel.Volume{
				{Version: "v4", Server: v4, Port: 2049, Dev: "0:33", FSID: "1:0"},
				{Version: "v3", Server: v4, Port: 2049, Dev: "0:32", FSID: "1:0"},
				{Version: "v4", Server: v6, Port: 2049, Dev: "0:35", FSID: "1:0"},
				{Version: "v3", Server: v6, Port: 2049, Dev: "0:34", FSID: "1:0"},
			},
		},
		{name: "header only", text: "NV SERVER   PORT DEV          FSID                              FSC\n"},
		{name: "empty", text: ""},
		{
			name: "blank lines and no trailing newline",
			text: "\nNV SERVER   PORT DEV          FSID                              FSC\n\n   \n" +
				"v4 cb007105  801 0:60         a0f2c6c4e59a44ba:9b3ee2e4f3e1b0a0  no",
			want: []kernel.Volume{{Version: "v4", Server: netip.MustParseAddr("203.0.113.5"), Port: 2049, Dev: "0:60", FSID: "a0f2c6c4e59a44ba:9b3ee2e4f3e1b0a0"}},
		},
		{
			name: "no FSID column",
			text: "v4 c6336401  801 0:33\n",
			want: []kernel.Volume{{Version: "v4", Server: v4, Port: 2049, Dev: "0:33"}},
		},
		{
			name: "IPv4-mapped IPv6 is unmapped, odd port",
			text: "v3 00000000000000000000ffffc0000201  3a98 0:40 1:0 no\n",
			want: []kernel.Volume{{Version: "v3", Server: netip.MustParseAddr("192.0.2.1"), Port: 0x3a98, Dev: "0:40", FSID: "1:0"}},
		},
		{name: "too few fields", text: kerneltest.RealVolumes + "v4 c6336401  801\n", wantErr: "line 6: 3 fields, want at least 4"},
		{name: "address not hex", text: "NV SERVER PORT DEV\nv4 zz336401  801 0:33 1:0 no\n", wantErr: `line 2: server address "zz336401"`},
		{name: "odd hex digits", text: "v4 c633640  801 0:33 1:0 no\n", wantErr: `line 1: server address "c633640"`},
		{name: "5-byte address", text: "v4 c633640101  801 0:33 1:0 no\n", wantErr: `line 1: server address "c633640101": 5 bytes`},
		{name: "port not hex", text: "v4 c6336401  80g 0:33 1:0 no\n", wantErr: `line 1: port "80g"`},
		{name: "port too large", text: "v4 c6336401  10000 0:33 1:0 no\n", wantErr: `line 1: port "10000"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kernel.ParseVolumes([]byte(tt.text))
			checkErr(t, err, tt.wantErr)
			if tt.wantErr == "" && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseVolumes =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestParseClients(t *testing.T) {
	v4 := netip.MustParseAddr("198.51.100.1")
	v6 := netip.MustParseAddr("2001:db8::1")
	tests := []struct {
		name    string
		text    string
		want    []kernel.Client
		wantErr string
	}{
		{
			name: "real kernel v3 and v4, IPv4 and IPv6",
			text: kerneltest.RealServers,
			want: []kernel.Client{
				{Version: "v4", Server: v4, Port: 2049, Use: 1, Hostname: "198.51.100.1"},
				{Version: "v3", Server: v4, Port: 2049, Use: 1, Hostname: "198.51.100.1"},
				{Version: "v4", Server: v6, Port: 2049, Use: 1, Hostname: "2001:db8::1"},
				{Version: "v3", Server: v6, Port: 2049, Use: 1, Hostname: "2001:db8::1"},
			},
		},
		{name: "header only", text: "NV SERVER   PORT USE HOSTNAME\n"},
		{
			name: "blank lines, host name, wide USE",
			text: "\nNV SERVER   PORT USE HOSTNAME\n\nv4 c0000205  801 123 nfs.example.test\n\n",
			want: []kernel.Client{{Version: "v4", Server: netip.MustParseAddr("192.0.2.5"), Port: 2049, Use: 123, Hostname: "nfs.example.test"}},
		},
		{name: "missing hostname", text: "NV SERVER   PORT USE HOSTNAME\nv4 c6336401  801   1\n", wantErr: "line 2: 4 fields, want at least 5"},
		{name: "USE not a number", text: "v4 c6336401  801   x 198.51.100.1\n", wantErr: `line 1: USE "x"`},
		{name: "address garbage", text: kerneltest.RealServers + "v4 hello  801   1 h\n", wantErr: `line 6: server address "hello"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kernel.ParseClients([]byte(tt.text))
			checkErr(t, err, tt.wantErr)
			if tt.wantErr == "" && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseClients =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	case err != nil && strings.Contains(err.Error(), "\n"):
		t.Fatalf("error has a newline: %q", err)
	}
}

func TestStartTime(t *testing.T) {
	tests := []struct {
		name    string
		stat    string // "" = no stat file
		want    uint64
		wantErr string
	}{
		{name: "plain", stat: kerneltest.StatLine(42, "sleep", 324581), want: 324581},
		{name: "comm with spaces", stat: kerneltest.StatLine(42, "my daemon x", 7), want: 7},
		{name: "comm with parens", stat: kerneltest.StatLine(42, "a) b (c", 99), want: 99},
		{name: "comm ending in a paren and digits", stat: kerneltest.StatLine(42, ") 1 2 3 4)", 12345), want: 12345},
		{name: "comm with newline", stat: kerneltest.StatLine(42, "x\ny", 5), want: 5},
		{name: "no paren", stat: "42 sleep S 1 2 3\n", wantErr: "parse /proc/42/stat: no ')'"},
		{name: "truncated", stat: "42 (sleep) S 1 42 42 0 -1\n", wantErr: "parse /proc/42/stat: 6 fields"},
		{name: "starttime not a number", stat: strings.Replace(kerneltest.StatLine(42, "sleep", 1), " 1 3133440 ", " x 3133440 ", 1), wantErr: "invalid syntax"},
		{name: "exited", wantErr: "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.stat != "" {
				os.Mkdir(filepath.Join(root, "42"), 0o700)
				if err := os.WriteFile(filepath.Join(root, "42", "stat"), []byte(tt.stat), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := kernel.Proc{Root: root}.StartTime(42)
			checkErr(t, err, tt.wantErr)
			if got != tt.want {
				t.Errorf("StartTime = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestStartTimeReal(t *testing.T) {
	pid := os.Getpid()
	got, err := kernel.Proc{}.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if want := f[19]; fmt.Sprint(got) != want {
		t.Errorf("StartTime(self) = %d, want %s", got, want)
	}
}

func TestPIDs(t *testing.T) {
	root := t.TempDir()
	for _, name := range []string{"1", "10", "2", "300", "self", "thread-self", "sys", "net", "0", "-5", "12a", "007x", ".ns"} {
		if err := os.Mkdir(filepath.Join(root, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"99", "uptime"} { // a file named like a PID is listed too
		os.WriteFile(filepath.Join(root, name), nil, 0o600)
	}
	got, err := kernel.Proc{Root: root}.PIDs()
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 2, 10, 99, 300}; !slices.Equal(got, want) {
		t.Errorf("PIDs = %v, want %v", got, want)
	}
	if _, err := (kernel.Proc{Root: filepath.Join(root, "missing")}).PIDs(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PIDs of a missing procfs: %v, want ErrNotExist", err)
	}
}

func TestPIDsReal(t *testing.T) {
	pids, err := kernel.Proc{}.PIDs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSorted(pids) || !slices.Contains(pids, os.Getpid()) || !slices.Contains(pids, 1) {
		t.Errorf("PIDs of /proc (%d of them) not sorted or missing 1 or self (%d)", len(pids), os.Getpid())
	}
}

func TestCommAndNFSMounts(t *testing.T) {
	f := kerneltest.New(t)
	f.Add(7, kerneltest.Process{Mnt: "m", Net: "n", Comm: "nfs holder", Mountinfo: kerneltest.RootMountinfo + kerneltest.RealMountinfo})
	p := f.Proc()
	if got := p.Comm(7); got != "nfs holder" {
		t.Errorf("Comm = %q", got)
	}
	if got := p.Comm(8); got != "?" {
		t.Errorf("Comm of a missing process = %q, want ?", got)
	}
	ms, err := p.NFSMounts(7)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, fmt.Sprintf("%d %d:%d %s %s %s", m.ID, m.Major, m.Minor, m.Mountpoint, m.FSType, m.Source))
	}
	want := []string{
		"59 0:33 /m4 nfs4 198.51.100.1:/export",
		"57 0:32 /m3 nfs 198.51.100.1:/export",
		"61 0:35 /m6 nfs4 [2001:db8::1]:/export",
		"58 0:34 /m63 nfs [2001:db8::1]:/export",
	}
	if !slices.Equal(got, want) {
		t.Errorf("NFSMounts =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := p.NFSMounts(8); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NFSMounts of a missing process: %v", err)
	}
}

func TestVolumesAndClientsFixture(t *testing.T) {
	f := kerneltest.New(t)
	f.Add(10, kerneltest.Process{Mnt: "m", Net: "n", Volumes: kerneltest.RealVolumes, Servers: kerneltest.RealServers})
	f.Add(11, kerneltest.Process{Mnt: "m", Net: "never-nfs"})
	f.Add(12, kerneltest.Process{Mnt: "m", Net: "bad", Volumes: "v4 nothex 801 0:1\n", Servers: "v4 c6336401 801 x h\n"})
	p := f.Proc()
	tests := []struct {
		pid            int
		vols, clients  int
		volErr, cliErr string
	}{
		{pid: 10, vols: 4, clients: 4},
		{pid: 11}, // nfsfs absent: NFS never used in that netns
		{pid: 12, volErr: "line 1: server address", cliErr: `line 1: USE "x"`},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.pid), func(t *testing.T) {
			v, err := p.Volumes(tt.pid)
			checkErr(t, err, tt.volErr)
			c, err := p.Clients(tt.pid)
			checkErr(t, err, tt.cliErr)
			if len(v) != tt.vols || len(c) != tt.clients {
				t.Errorf("%d volumes, %d clients; want %d, %d", len(v), len(c), tt.vols, tt.clients)
			}
		})
	}
}

// startInNewNS starts sleep in new network and mount namespaces (cloned
// with them, so they are set before the child runs) and ends it when the
// test ends.
func startInNewNS(t *testing.T, dir string, extra ...*os.File) *exec.Cmd {
	t.Helper()
	requireRoot(t)
	cmd := exec.Command("sleep", "600")
	cmd.Dir = dir
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET | unix.CLONE_NEWNS}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep in new netns+mntns: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// requireRoot fails (never skips) a test that needs root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network and mount namespaces (run the tests as root)")
	}
}

func TestScanRealNamespaces(t *testing.T) {
	child := startInNewNS(t, "/").Process.Pid
	p := kernel.Proc{}
	selfNet, err := nsmount.NSOfPath("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	selfMnt, _ := nsmount.NSOfPath("/proc/self/ns/mnt")
	// Where PID 1 cannot be inspected (a sandbox whose init has more
	// privileges than we do), Scan takes our own netns as the host's.
	initNet, initErr := nsmount.NSOfPath("/proc/1/ns/net")
	if initErr != nil {
		t.Logf("PID 1's netns is not readable here (%v): expecting Init to be our own netns", initErr)
		initNet = selfNet
	}
	childNet, err := p.NS(child, "net")
	if err != nil {
		t.Fatal(err)
	}
	childMnt, err := p.NS(child, "mnt")
	if err != nil {
		t.Fatal(err)
	}
	if childNet == selfNet || childMnt == selfMnt {
		t.Fatalf("child namespaces net %v mnt %v not new (test's: %v %v)", childNet, childMnt, selfNet, selfMnt)
	}
	if childNet.Dev != selfNet.Dev || childNet.Dev == 0 {
		t.Errorf("nsfs device differs: child %d, self %d", childNet.Dev, selfNet.Dev)
	}
	// The inode is what the kernel shows in the ns link: net:[INODE].
	if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", child)); link != "net:["+childNet.String()+"]" {
		t.Errorf("ns link %q, nsmount.NSID %s", link, childNet)
	}

	ns, err := p.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if got := ns.NetNS[childNet]; !slices.Equal(got, []int{child}) {
		t.Errorf("NetNS[child's] = %v, want [%d]", got, child)
	}
	if got := ns.MountNS[childMnt]; !slices.Equal(got, []int{child}) {
		t.Errorf("MountNS[child's] = %v, want [%d]", got, child)
	}
	if ns.NetOf[childMnt] != childNet {
		t.Errorf("NetOf[child's mntns] = %v, want %v", ns.NetOf[childMnt], childNet)
	}
	if !slices.Contains(ns.NetNS[selfNet], os.Getpid()) || !slices.Contains(ns.MountNS[selfMnt], os.Getpid()) {
		t.Errorf("test process %d not under its own namespaces", os.Getpid())
	}
	if slices.Contains(ns.NetNS[selfNet], child) {
		t.Errorf("child listed in the test's netns")
	}
	if ns.Init != initNet {
		t.Errorf("Init = %+v, want PID 1's %+v", ns.Init, initNet)
	}
	for id, pids := range ns.MountNS {
		if !slices.IsSorted(pids) {
			t.Errorf("MountNS[%v] not ascending: %v", id, pids)
		}
	}

	if _, err := p.NS(child, "bogus"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NS(kind bogus) = %v, want ErrNotExist", err)
	}
	var pe *os.PathError
	if _, err := p.NS(1<<30, "net"); !errors.As(err, &pe) || !strings.Contains(pe.Path, "/ns/net") {
		t.Errorf("NS of a missing pid = %v, want a PathError naming the ns file", err)
	}
}

func TestScanFixture(t *testing.T) {
	f := kerneltest.New(t)
	f.Add(1, kerneltest.Process{Mnt: "host", Net: "host"})
	f.Add(30, kerneltest.Process{Mnt: "c1", Net: "c1"})
	f.Add(20, kerneltest.Process{Mnt: "c1", Net: "c1"})
	f.Add(40, kerneltest.Process{Mnt: "side", Net: "c1"})
	f.Add(50, kerneltest.Process{Mnt: "kthread"}) // no net ns file: skipped
	ns, err := f.Proc().Scan()
	if err != nil {
		t.Fatal(err)
	}
	host, c1, side := f.NS("host"), f.NS("c1"), f.NS("side")
	want := &kernel.Namespaces{
		MountNS: map[nsmount.NSID][]int{host: {1}, c1: {20, 30}, f.NS("side"): {40}},
		NetNS:   map[nsmount.NSID][]int{host: {1}, c1: {20, 30, 40}},
		NetOf:   map[nsmount.NSID]nsmount.NSID{host: host, c1: c1, side: c1},
		Init:    host,
	}
	if !reflect.DeepEqual(ns, want) {
		t.Errorf("Scan =\n%+v\nwant\n%+v", ns, want)
	}
}

func TestHoldersReal(t *testing.T) {
	dir := t.TempDir()
	held, err := os.Create(filepath.Join(dir, "held"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	child := startInNewNS(t, dir, held).Process.Pid // fd 3 in the child
	dev, ok := kernel.DevOf(dir)
	if !ok {
		t.Fatal("statx of the temp dir failed")
	}
	hs, err := kernel.Proc{}.Holders(map[string]bool{dev: true})
	if err != nil {
		t.Fatal(err)
	}
	var mine []string
	for _, h := range hs[dev] {
		if h.PID == os.Getpid() {
			t.Errorf("Holders lists the calling process: %+v", h)
		}
		// Only what the test made: sleep may briefly hold files of its
		// own while it starts (locale files on the same filesystem).
		if h.PID == child && (strings.HasPrefix(h.Path, dir) || h.What == "root") {
			mine = append(mine, h.What+" "+h.Path+" "+h.Comm)
		}
	}
	slices.Sort(mine)
	want := []string{"cwd " + dir + " sleep", "fd 3 " + held.Name() + " sleep"}
	if rootDev, _ := kernel.DevOf("/"); rootDev == dev {
		want = append(want, "root / sleep") // the temp dir is on the root filesystem
	}
	slices.Sort(want)
	if !slices.Equal(mine, want) {
		t.Errorf("holders of %s by pid %d = %q, want %q", dev, child, mine, want)
	}
	if hs, err := (kernel.Proc{}).Holders(nil); err != nil || len(hs) != 0 {
		t.Errorf("Holders(nil) = %v, %v", hs, err)
	}
}

// TestBootTicksOrdersWithStartTime checks kernel.BootTicks against the kernel's own
// start times: this test process started before the first reading, and a
// process started after a reading has a start time at or after it.
func TestBootTicksOrdersWithStartTime(t *testing.T) {
	before, err := kernel.BootTicks()
	if err != nil {
		t.Fatal(err)
	}
	self, err := kernel.Proc{}.StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if self > before {
		t.Errorf("this process started at %d, after kernel.BootTicks() = %d", self, before)
	}
	time.Sleep(20 * time.Millisecond) // two ticks: the child starts strictly later
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	child, err := kernel.Proc{}.StartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if child <= before {
		t.Errorf("a process started after kernel.BootTicks() = %d has start time %d", before, child)
	}
}

func TestMountStatsTexts(t *testing.T) {
	f := kerneltest.New(t)
	const stats = "device 198.51.100.1:/export mounted on /m4 with fstype nfs4 statvers=1.1\n"
	f.Add(7, kerneltest.Process{Mnt: "m", Net: "n", Mountinfo: kerneltest.RealMountinfo, Mountstats: stats})
	f.Add(8, kerneltest.Process{Mnt: "m2", Net: "n", Mountinfo: kerneltest.RealMountinfo})
	p := f.Proc()
	info, text, err := p.MountStatsTexts(7)
	if err != nil {
		t.Fatal(err)
	}
	if string(info) != kerneltest.RealMountinfo || string(text) != stats {
		t.Errorf("MountStatsTexts = %q, %q", info, text)
	}
	for _, pid := range []int{8, 9} { // no mountstats; no process
		if _, _, err := p.MountStatsTexts(pid); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("MountStatsTexts(%d) = %v, want ErrNotExist", pid, err)
		}
	}
}
