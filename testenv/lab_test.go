package testenv_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsmount/nsmount/testenv"
	"github.com/nsmount/nsmount/testenv/labtest"
)

// smokeScript proves the lab without nsmount: an NFS server in netns srv1,
// a container c1 linked to it by veth, NFSv4.2 and NFSv3 mounts made in the
// container's namespaces, files written by the client visible on the server.
const smokeScript = `
set -e
lab_log "smoke: start"
lab_netns srv1
lab_container c1
lab_veth srv1 eth0 198.51.100.1/24 c1 eth0 198.51.100.2/24
lab_nfsd srv1 srv1
lab_log "smoke: server ready"
pid=$(lab_pid c1)
lab_check container-hostname test "$(lab_exec c1 hostname)" = c1
lab_check container-own-root test ! -e /proc/$pid/root/usr/lib/nsmount-lab/lab.sh
lab_check container-resolv grep -q 192.0.2.53 /proc/$pid/root/etc/resolv.conf
lab_check ping lab_exec c1 ping -c 1 -W 2 198.51.100.1

lab_mount c1 -t nfs4 -o vers=4.2 198.51.100.1:/export /mnt
lab_log "smoke: v4.2 mounted"
lab_check_output v42-read srv1 lab_exec c1 cat /mnt/whoami
lab_exec c1 sh -c 'echo hello-v4 > /mnt/from-client'
lab_check_output v42-write hello-v4 cat /srv/srv1/from-client
lab_check v42-not-in-vm sh -c '! grep -q " /mnt " /proc/self/mounts'
lab_check_output v42-in-container "198.51.100.1:/export /mnt nfs4" cat /proc/$pid/mounts
lab_check_output v42-volume "v4" cat /proc/$pid/net/nfsfs/volumes
lab_umount c1 /mnt

lab_mount c1 -t nfs -o vers=3,nolock 198.51.100.1:/export /mnt
lab_log "smoke: v3 mounted"
lab_exec c1 sh -c 'echo hello-v3 > /mnt/from-v3'
lab_check_output v3-write hello-v3 cat /srv/srv1/from-v3
lab_check_output v3-in-container "198.51.100.1:/export /mnt nfs " cat /proc/$pid/mounts
lab_umount c1 /mnt
lab_log "smoke: done"
`

func TestLabSmoke(t *testing.T) {
	t.Parallel()
	res := labtest.RunT(t, smokeScript)
	t.Logf("smoke run: %v", res.Duration)
}

func TestLabGuestTimeout(t *testing.T) {
	t.Parallel()
	lab := labtest.Shared(t)
	short := testenv.LabWith(lab, 28*time.Second, nil) // the guest stops the script after 8 s
	res, err := short.Run(t.Context(), "echo started; sleep 600; echo not reached", nil)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if res.ExitCode != 124 {
		t.Errorf("exit code %d, want 124", res.ExitCode)
	}
	if !strings.Contains(res.Output, "script timed out") || strings.Contains(res.Output, "not reached") {
		t.Errorf("unexpected output:\n%s", res.Output)
	}
	t.Logf("guest timeout run took %v", res.Duration)
}

func TestLabHostTimeoutAndCancel(t *testing.T) {
	t.Parallel()
	lab := labtest.Shared(t)
	t.Run("timeout", func(t *testing.T) {
		short, assertGone := trackQemu(t, lab, 2*time.Second, nil) // before the guest boots
		start := time.Now()
		_, err := short.Run(t.Context(), "sleep 600", nil)
		if !errors.Is(err, testenv.ErrTimeout) {
			t.Fatalf("error %v, want ErrTimeout", err)
		}
		// How long it took includes waiting for a VM slot: logged, not asserted.
		t.Logf("timed-out run returned after %v", time.Since(start).Round(time.Millisecond))
		assertGone()
	})
	t.Run("cancel", func(t *testing.T) {
		// The context is cancelled 2 s after qemu started, not 2 s after
		// the call: waiting for a VM slot held by other tests does not count.
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		tracked, assertGone := trackQemu(t, lab, time.Minute, func() { time.AfterFunc(2*time.Second, cancel) })
		_, err := tracked.Run(ctx, "sleep 600", nil)
		if !errors.Is(err, context.Canceled) || errors.Is(err, testenv.ErrTimeout) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		assertGone()
	})
}

// trackQemu returns a copy of lab that records its qemu PIDs and calls
// started (if not nil) once each qemu runs, and a function that fails t if
// no qemu started or one of them still exists.
func trackQemu(t *testing.T, lab *testenv.Lab, timeout time.Duration, started func()) (*testenv.Lab, func()) {
	var mu sync.Mutex
	var pids []int
	c := testenv.LabWith(lab, timeout, func(pid int) {
		mu.Lock()
		pids = append(pids, pid)
		mu.Unlock()
		if started != nil {
			started()
		}
	})
	return c, func() {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if len(pids) == 0 {
			t.Error("no qemu started")
		}
		for _, pid := range pids {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
				t.Errorf("qemu pid %d still exists", pid)
			}
		}
	}
}

// helpersScript exercises the helpers in a routed topology: a router
// namespace between a container and two servers, IPv6, a second container
// sharing a netns, helper usage errors, a kernel NFS server stopped and
// started again, and lab_ganesha in a run without Ganesha.
const helpersScript = `
set -e
lab_netns srv1; lab_netns srv2; lab_netns rtr
lab_forward rtr
lab_container c1
lab_veth srv1 eth0 198.51.100.1/24 rtr s1 198.51.100.254/24
lab_veth srv2 eth0 203.0.113.1/24  rtr s2 203.0.113.254/24
lab_veth c1 eth0 192.0.2.10/24     rtr c1 192.0.2.254/24
lab_veth srv1 eth1 2001:db8:2::1/64 c1 eth1 2001:db8:2::2/64
lab_route c1 default 192.0.2.254
lab_route srv1 default 198.51.100.254
lab_route srv2 default 203.0.113.254
lab_nfsd srv1 srv1
lab_nfsd srv2 srv2

mount_whoami() { lab_mount c1 "$@" /mnt >/dev/null && lab_exec c1 cat /mnt/whoami && lab_umount c1 /mnt >/dev/null; }
lab_check_output routed-v41-srv2 srv2 mount_whoami -t nfs4 -o vers=4.1 203.0.113.1:/export
lab_check_output routed-v3-srv1 srv1 mount_whoami -t nfs -o vers=3,nolock 198.51.100.1:/export
lab_check_output ipv6-v40-srv1 srv1 mount_whoami -t nfs4 -o vers=4.0 [2001:db8:2::1]:/export
lab_check_output ct-resolv "search lab.test" lab_exec c1 cat /etc/resolv.conf
lab_check_output ct-hosts c1 lab_exec c1 cat /etc/hosts

lab_container c2 c1
lab_check_output c2-shares-netns "$(readlink /proc/$(lab_pid c1)/ns/net)" readlink /proc/$(lab_pid c2)/ns/net
lab_check_output c2-hostname c2 lab_exec c2 hostname
lab_check_fails c2-own-mountns test "$(readlink /proc/$(lab_pid c1)/ns/mnt)" = "$(readlink /proc/$(lab_pid c2)/ns/mnt)"

lab_check_fails usage-error lab_veth a b
lab_check_fails no-such-container lab_pid nope
lab_check_fails duplicate-container lab_container c1

mkdir -p /data
lab_light_routed l1 srv1 192.0.2.77 198.51.100.1
L1=$(lab_pid l1)
lab_check_fails light-own-netns test "$(readlink /proc/$L1/ns/net)" = "$(readlink /proc/self/ns/net)"
lab_check_fails light-own-mntns test "$(readlink /proc/$L1/ns/mnt)" = "$(readlink /proc/self/ns/mnt)"
light_whoami() { lab_mount l1 "$@" /data >/dev/null && lab_exec l1 cat /data/whoami; }
lab_check_output light-v42-srv1 srv1 light_whoami -t nfs4 -o vers=4.2 198.51.100.1:/export
lab_check_fails light-mount-stays-inside grep -q ' /data ' /proc/self/mountinfo
lab_check_output light-veth-in-srv1 hl1 ip -n srv1 -o link show hl1
lab_stop l1
lab_check_fails light-stopped kill -0 $L1
lab_check_fails light-forgotten lab_pid l1
lab_check_fails light-failing-setup lab_light_container l2 false
C2=$(lab_pid c2)
lab_check stop-in-subshell lab_stop c2
lab_check c2-ended sh -c "! [ -e /proc/$C2 ] || grep -q '^State:.Z' /proc/$C2/status"
lab_check_fails c2-root-unmounted grep -q ' /ct/c2 ' /proc/self/mountinfo

# lab_nfsd_stop: the port is free, the daemons are gone, the directory
# stays, and a server starts again in the same netns.
echo kept >/srv/srv2/kept
lab_check nfsd-stop lab_nfsd_stop srv2
lab_check_fails nfsd-stopped-no-daemons test -n "$(lab_netns_pids srv2 rpc.mountd rpcbind rpc.statd nfsdcld)"
lab_check_fails nfsd-stop-twice lab_nfsd_stop srv2
lab_check_output nfsd-stop-keeps-dir kept cat /srv/srv2/kept
lab_check nfsd-start-again lab_nfsd srv2 srv2
lab_check_output nfsd-serves-again srv2 mount_whoami -t nfs4 -o vers=4.2 203.0.113.1:/export
ganesha_missing() { lab_ganesha srv2 g 2>&1 || true; }
lab_check_output ganesha-needs-the-run-option "not installed in this run" ganesha_missing
`

func TestLabHelpers(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, helpersScript)
}

// dnsScript proves lab_dns: servers in netns dns1, queried with busybox
// nslookup from netns cl (A, AAAA, several addresses, CNAME, case, NXDOMAIN),
// and the --truncate, --tcp-only and --silent variants, which busybox's
// UDP-only nslookup cannot get an answer from.
const dnsScript = `
set -e
lab_netns dns1; lab_netns cl
lab_veth dns1 eth0 192.0.2.53/24 cl eth0 192.0.2.10/24
lab_ip dns1 addr add 192.0.2.54/24 dev eth0
lab_ip dns1 addr add 192.0.2.55/24 dev eth0
lab_ip dns1 addr add 192.0.2.56/24 dev eth0
lab_dns dns1 192.0.2.53 web.lab.test=198.51.100.7 web.lab.test=198.51.100.8 web.lab.test=2001:db8::7 \
	v6only.lab.test=2001:db8::6 www.lab.test=web.lab.test
lab_dns dns1 192.0.2.54 --truncate web.lab.test=198.51.100.7
lab_dns dns1 192.0.2.55 --tcp-only web.lab.test=198.51.100.7
lab_dns dns1 192.0.2.56 --silent web.lab.test=198.51.100.7
ns() { lab_in_netns cl /usr/bin/timeout 5 /usr/bin/nslookup "$@"; }
# ns_has WANT NAME SERVER: nslookup's output contains WANT.
ns_has() { ns "$2" "$3" 2>&1 | grep -q "$1"; }
lab_check_output dns-a 198.51.100.7 ns web.lab.test 192.0.2.53
lab_check_output dns-a-second 198.51.100.8 ns web.lab.test 192.0.2.53
lab_check_output dns-aaaa 2001:db8::7 ns web.lab.test 192.0.2.53
lab_check_output dns-case 198.51.100.7 ns WEB.Lab.Test 192.0.2.53
lab_check_output dns-cname 198.51.100.7 ns www.lab.test 192.0.2.53
lab_check_output dns-aaaa-only 2001:db8::6 ns -type=AAAA v6only.lab.test 192.0.2.53
lab_check dns-nxdomain ns_has NXDOMAIN nope.lab.test 192.0.2.53
lab_check_fails dns-truncated-udp ns_has 198.51.100.7 web.lab.test 192.0.2.54
lab_check_fails dns-tcp-only-udp ns_has 198.51.100.7 web.lab.test 192.0.2.55
lab_check_fails dns-silent ns_has 198.51.100.7 web.lab.test 192.0.2.56
lab_check_output dns-logged "A web.lab.test.: NOERROR" cat /run/lab/log/dns-dns1-192.0.2.53.log
lab_check_output dns-logged-truncated "truncated" cat /run/lab/log/dns-dns1-192.0.2.54.log
lab_check_output dns-logged-silent "web.lab.test.: silent" cat /run/lab/log/dns-dns1-192.0.2.56.log
lab_check_fails dns-tcp-only-no-udp grep -q "^dns: udp" /run/lab/log/dns-dns1-192.0.2.55.log
lab_check_fails dns-usage lab_dns dns1 192.0.2.53
`

func TestLabDNS(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, dnsScript)
}

// TestLabVCPUs boots a guest with two vCPUs (WithVCPUs) and runs a script
// that sees both and uses them.
func TestLabVCPUs(t *testing.T) {
	t.Parallel()
	labtest.RunT(t, `
lab_check_output two-cpus 2 grep -c ^processor /proc/cpuinfo
lab_check_output two-online 0-1 cat /sys/devices/system/cpu/online
lab_check both-run sh -c 'taskset -c 0 true && taskset -c 1 true'
`, testenv.WithVCPUs(2))
}
