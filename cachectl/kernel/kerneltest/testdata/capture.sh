# Captures real NFS client statistics text for the parser tests and
# measures what the kernel shows during an outage. Run on both lab kernels:
#
#   go run ./cmd/nsmount-lab run cachectl/kernel/kerneltest/testdata/capture.sh > /tmp/cap-6.1.log
#   go run ./cmd/nsmount-lab run --kernel-package linux-image-6.12-cloud-amd64 \
#       cachectl/kernel/kerneltest/testdata/capture.sh > /tmp/cap-6.12.log
#   awk '/^=== BEGIN FILE /{f = $4; next} /^=== END FILE /{f = ""; next} f {print > f}' /tmp/cap-6.1.log
#
# The FILE sections are the testdata here (kerneltest.Captured; kmsg-*.txt
# go to cachectl/kmsg/testdata); the MEASURE lines are what README and the
# watchdog's rules rely on: per-op major timeouts are counted only when a
# request completes, so during an outage only the transport shows it
# (requests sent, no reply).
#
# Two containers, c1 and c2, mount the same address 198.51.100.10 from
# different netns, each reaching a server of its own (srvA, srvB). c1 also
# has an NFSv3 mount and an NFSv4.1 mount with nconnect=4.
set -u
KVER=$(uname -r | cut -d. -f1,2)
now() { awk '{print $1}' /proc/uptime; }
lab_netns srvA >/dev/null
lab_netns srvB >/dev/null
lab_container c1 >/dev/null
lab_container c2 >/dev/null
lab_veth srvA eth0 198.51.100.10/24 c1 eth0 198.51.100.2/24 >/dev/null
lab_veth srvB eth0 198.51.100.10/24 c2 eth0 198.51.100.2/24 >/dev/null
lab_nfsd srvA srvA >/dev/null
lab_nfsd srvB srvB >/dev/null
C1=$(lab_pid c1)
C2=$(lab_pid c2)
S=198.51.100.10
HARD=vers=4.2,noac,hard,timeo=10,retrans=1
nsmount mount --pid $C1 -o $HARD $S:/export /data
nsmount mount --pid $C1 --mkdir -o vers=3,nolock $S:/export /v3
nsmount mount --pid $C1 -o vers=4.1,nconnect=4 $S:/export /mnt
nsmount mount --pid $C2 -o $HARD $S:/export /data
for d in /data /v3 /mnt; do
	lab_exec c1 sh -c "echo hello > $d/f-\$\$ && cat $d/f-\$\$ >/dev/null && ls -l $d >/dev/null && dd if=/dev/zero of=$d/big bs=64k count=4 2>/dev/null && sync"
done
lab_exec c2 sh -c 'echo hi > /data/g && cat /data/g >/dev/null'

file() { echo "=== BEGIN FILE $1"; cat "$2"; echo "=== END FILE $1"; }
file "mountstats-$KVER.txt" /proc/$C1/mountstats
file "mountinfo-$KVER.txt" /proc/$C1/mountinfo
file "nfsfs-volumes-$KVER.txt" /proc/$C1/net/nfsfs/volumes
file "nfsfs-servers-$KVER.txt" /proc/$C1/net/nfsfs/servers

# One record of the file: the superblock mounted at $2 in the mountstats of $1.
record() { awk -v mp="$2" '/^device /{p = ($5 == mp)} p' /proc/$1/mountstats; }
op() { record $1 $2 | awk -v op="$3:" '$1 == op {print $2, $3, $4, $7, $8, $9, $10}'; }
xprt() { record $1 $2 | awk '$1 == "xprt:"'; }
majors() { record $1 $2 | awk '/per-op/{p=1; next} p && NF > 8 {m += $4} END {print m + 0}'; }

# GETATTRs counted apart per netns (noac: each stat asks the server).
echo "MEASURE getattr before: c1 $(op $C1 /data GETATTR) | c2 $(op $C2 /data GETATTR)"
lab_exec c2 sh -c 'i=0; while [ $i -lt 200 ]; do stat /data/g >/dev/null; i=$((i+1)); done'
echo "MEASURE getattr after 200 stats in c2: c1 $(op $C1 /data GETATTR) | c2 $(op $C2 /data GETATTR)"

# The outages. Kernel messages come from /dev/kmsg (raw records kept for
# the kmsg parser tests); hung tasks are reported after 5 s.
echo 5 > /proc/sys/kernel/hung_task_timeout_secs
echo 1 > /proc/sys/kernel/hung_task_check_interval_secs 2>/dev/null || true
cat /dev/kmsg > /tmp/kmsg.raw &
KMSG=$!
sleep 0.5
# sample LABEL: one line of what c1's /data and c2's /data show, and how
# long reading c1's mountstats took.
sample() {
	_a=$(now)
	cat /proc/$C1/mountstats >/dev/null
	_b=$(now)
	echo "MEASURE $1 t=$(awk -v a=$T0 -v b=$_b 'BEGIN{printf "%.1f", b - a}') read=$(awk -v a=$_a -v b=$_b 'BEGIN{printf "%.2f", b - a}')s majors=$(majors $C1 /data) getattr=[$(op $C1 /data GETATTR)] $(xprt $C1 /data | tr -s '\t' ' ') | c2 $(xprt $C2 /data | tr -s '\t' ' ')"
}
# kmsg_since T LABEL: the kernel messages since uptime T, with times relative to it.
kmsg_since() {
	awk -F';' -v t0="$1" -v l="$2" '{split($1, h, ","); if (h[3] / 1e6 >= t0) printf "MEASURE kmsg %s t=%.2f %s\n", l, h[3] / 1e6 - t0, $2}' /tmp/kmsg.raw
}

# A: c1's own route to the server is blackholed (connect gets EINVAL).
T0=$(now)
echo "MEASURE A: client-side blackhole at $T0"
ip -n c1 route add blackhole $S/32
lab_exec c1 stat /data/whoami >/dev/null &
STAT=$!
i=0
while [ $i -lt 16 ]; do sleep 0.5; sample A; i=$((i + 1)); done
file "mountstats-outage-$KVER.txt" /proc/$C1/mountstats
TA=$T0
T0=$(now)
echo "MEASURE A: route back at $T0"
ip -n c1 route del blackhole $S/32
i=0
while [ $i -lt 8 ]; do sleep 0.5; sample A-back; i=$((i + 1)); done
wait $STAT
kmsg_since $TA A

# B: the server's route back to c1 is blackholed (silent loss: requests
# arrive, replies do not). A writer keeps dirty pages of /mnt open, and a
# sync in c1 waits for their writeback (uninterruptibly: a hung task).
lab_exec c1 sh -c 'exec 3>/mnt/dirty; dd if=/dev/zero bs=64k count=16 >&3 2>/dev/null; sleep 60' &
WRITER=$!
sleep 1
T0=$(now)
echo "MEASURE B: server-side blackhole at $T0"
ip -n srvA route add blackhole 198.51.100.2/32
lab_exec c1 sync &
SYNC=$!
i=0
while [ $i -lt 24 ]; do sleep 0.5; sample B; i=$((i + 1)); done
echo "MEASURE B: sync pid $(pgrep -x sync | tr '\n' ' ') state $(cat /proc/$(pgrep -x sync | head -1)/stat 2>/dev/null | cut -d' ' -f3) netns $(readlink /proc/$(pgrep -x sync | head -1)/ns/net) c1 netns $(readlink /proc/$C1/ns/net)"
TB=$T0
T0=$(now)
echo "MEASURE B: route back at $T0"
ip -n srvA route del blackhole 198.51.100.2/32
i=0
while [ $i -lt 12 ]; do sleep 0.5; sample B-back; i=$((i + 1)); done
wait $SYNC
kill $WRITER 2>/dev/null
sleep 0.5
kill $KMSG
kmsg_since $TB B
awk -F';' -v t0="$TA" '{split($1, h, ","); if (h[3] / 1e6 >= t0) print}' /tmp/kmsg.raw > /tmp/kmsg.outage
file "kmsg-outage-$KVER.txt" /tmp/kmsg.outage
file "mountstats-after-$KVER.txt" /proc/$C1/mountstats
echo "LAB-CHECK PASS captured"
