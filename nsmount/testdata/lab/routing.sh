# Resolve and route from inside the container: the same server address, and
# the same server name, lead to a different NFS server in each context.
#
#   laptop (the VM's netns) --- srvL 203.0.113.10
#     | 198.51.100.1/.2
#   kvm (container) ----------- srvK 203.0.113.10, DNS 192.0.2.53 (nfs -> 203.0.113.10)
#     | 192.0.2.1/.10
#   c1 (container) ------------ srvC 203.0.113.10
set -u
three_level_net
lab_nfsd srvL srvL
lab_nfsd srvK srvK
lab_nfsd srvC srvC
lab_dns kvm 192.0.2.53 nfs.lab.test=203.0.113.10 only-host.lab.test=203.0.113.10
# The VM's own resolver says the name is somewhere else entirely.
echo "198.51.100.99 nfs.lab.test" >> /etc/hosts
three_levels $X

# Names: the container's resolver (its resolv.conf, its DNS server, queried
# through its network) vs the VM's own /etc/hosts.
lab_check_output route-explains-dns 'dns 192.0.2.53:53' nsmount route --pid $C1 nfs
nsmount route --pid $C1 nfs
lab_check_output route-chosen-c1 '"address": "203.0.113.10"' nsmount route --pid $C1 --json nfs
mount_read name-c1 $C1 nfs srvC vers=4.2
mount_read name-kvm $KVM nfs.lab.test srvK vers=4.2
mount_read name-c1-again $C1 nfs.lab.test srvC vers=3,nolock
# The VM ("laptop") resolves the same name with its own /etc/hosts, to an
# address where nothing answers.
lab_check_output laptop-resolves-with-its-hosts '198.51.100.99 (hosts' sh -c "nsmount route --pid $LAPTOP --timeout 1s nfs.lab.test; true"
check_exit laptop-name-leads-elsewhere 6 nsmount mount --pid $LAPTOP --timeout 1s nfs.lab.test:/export /mnt
check_exit resolve-from-host-is-explicit 6 nsmount mount --pid $C1 --timeout 1s --resolve-from host nfs.lab.test:/export /data
lab_check_output resolve-from-host-used-hosts '198.51.100.99' sh -c "nsmount route --pid $C1 --timeout 1s --resolve-from host nfs.lab.test; true"
check_exit name-not-found 6 nsmount mount --pid $C1 no-such-name:/export /data
lab_check_output name-not-found-says-so 'not found' sh -c "nsmount route --pid $C1 no-such-name 2>&1; true"

# Policy routing inside a container: a rule sends the server to a second
# interface; clientaddr is that interface's address.
lab_netns srvP
lab_container c2
lab_veth srvP eth0 198.51.100.1/24 c2 eth0 198.51.100.2/24
lab_veth srvP eth1 192.0.2.1/24 c2 eth1 192.0.2.20/24
ip -n srvP addr add 203.0.113.50/32 dev lo
lab_route c2 default 198.51.100.1
ip -n c2 rule add to 203.0.113.50 table 100
ip -n c2 route add 203.0.113.50 via 192.0.2.1 dev eth1 table 100
lab_nfsd srvP srvP
C2=$(lab_pid c2)
lab_check_output policy-route-eth1 'dev eth1 src 192.0.2.20' nsmount route --pid $C2 203.0.113.50
lab_check policy-mount nsmount mount --pid $C2 203.0.113.50:/export /data
lab_check_output policy-clientaddr 'clientaddr=192.0.2.20' grep ' /data ' /proc/$C2/mountinfo
# The live connection's source address, as the kernel's sunrpc sysfs (per
# netns: a sysfs mounted inside c2's netns, in a private mount namespace).
lab_check_output policy-connection-source '192.0.2.20' nsenter --net=/run/netns/c2 unshare -m sh -c 'mount -t sysfs none /sys && cat /sys/kernel/sunrpc/xprt-switches/*/xprt-*/srcaddr'
lab_check policy-umount nsmount umount --pid $C2 /data

# IPv6-only container network, with an AAAA-only name from its own DNS.
lab_netns srv6
lab_container c6
lab_veth srv6 eth0 2001:db8:6::1/64 c6 eth0 2001:db8:6::2/64
ip -n srv6 addr add 2001:db8:6::53/64 dev eth0 nodad
lab_nfsd srv6 srv6
lab_dns srv6 2001:db8:6::53 nfs6.lab.test=2001:db8:6::1
C6=$(lab_pid c6)
printf 'nameserver 2001:db8:6::53\nsearch lab.test\n' > /proc/$C6/root/etc/resolv.conf
lab_check_fails v6-container-has-no-ipv4 sh -c "ip -n c6 -4 addr show | grep -q 'inet .*global'"
mount_read v6-literal-v4.2 $C6 '[2001:db8:6::1]' srv6 vers=4.2
mount_read v6-literal-v3 $C6 '[2001:db8:6::1]' srv6 vers=3,nolock
mount_read v6-name $C6 nfs6 srv6 vers=4.1
lab_check v6-mount-clientaddr nsmount mount --pid $C6 nfs6:/export /data
lab_check_output v6-clientaddr 'clientaddr=2001:db8:6::2' grep ' /data ' /proc/$C6/mountinfo
nsmount umount --pid $C6 /data
check_exit v6-family-ipv4-only 6 nsmount mount --pid $C6 -o proto=tcp nfs6:/export /data

# Hostile resolver files and nameservers: clear errors, bounded time.
lab_netns dns9
lab_container c9
lab_veth dns9 eth0 192.0.2.54/24 c9 eth0 192.0.2.11/24
lab_dns dns9 192.0.2.54 --silent
C9=$(lab_pid c9)
R=/proc/$C9/root/etc/resolv.conf
printf 'nameserver\nnameserver banana\noptions ndots:x\n%%$#@!\nsearch\n' > $R
check_exit text-garbage-resolv-conf 6 nsmount mount --pid $C9 --timeout 1s nfs:/export /data
head -c 4096 /dev/urandom > $R
check_exit binary-garbage-resolv-conf 3 nsmount mount --pid $C9 nfs:/export /data
dd if=/dev/zero bs=1M count=10 2>/dev/null | tr '\000' 'x' > $R
check_exit huge-resolv-conf 3 nsmount mount --pid $C9 nfs:/export /data
lab_check_output huge-resolv-conf-says-so 'too large' sh -c "nsmount route --pid $C9 nfs 2>&1; true"
printf 'nameserver 192.0.2.54\noptions timeout:1 attempts:2\n' > $R
t0=$(date +%s)
check_exit silent-nameserver 6 nsmount mount --pid $C9 nfs.lab.test:/export /data
t1=$(date +%s)
lab_log "silent nameserver reported after $((t1 - t0)) s (timeout:1 attempts:2)"
lab_check silent-nameserver-bounded test $((t1 - t0)) -le 10
lab_check_output silent-nameserver-says-timeout 'timed out' sh -c "nsmount route --pid $C9 nfs.lab.test 2>&1; true"
lab_check no-leak-c1 no_leaks $C1
lab_check no-leak-kvm no_leaks $KVM
lab_check no-leak-c9 no_leaks $C9
