# Two containers with the same hostname, in different network namespaces,
# mount NFSv4.2 from one server. Without distinct client identities they
# send the same client ID and the server drops one whenever the other
# renews. nsmount gives each netns a unique identity before its first
# NFSv4 mount, and keeps one that is already set.
set -u
lab_netns srv1
lab_container c1
lab_container c2
lab_veth srv1 eth0 198.51.100.1/24 c1 eth0 198.51.100.2/24
lab_veth srv1 eth1 192.0.2.1/24 c2 eth0 192.0.2.2/24
lab_nfsd srv1 srv1
C1=$(lab_pid c1)
C2=$(lab_pid c2)
nsenter -t $C1 -u hostname app
nsenter -t $C2 -u hostname app
lab_check_output same-hostname app nsenter -t $C2 -u hostname

# identity NETNS: the netns's NFSv4 identifier, read through a sysfs mounted
# in a private mount namespace inside it.
identity() { nsenter --net=/run/netns/$1 unshare -m sh -c 'mount -t sysfs none /sys && cat /sys/fs/nfs/net/nfs_client/identifier'; }
lab_log "identifiers before: c1='$(identity c1)' c2='$(identity c2)'"

lab_check_output c1-identity-set '"client_id_set": true' nsmount mount --pid $C1 --json -o vers=4.2 198.51.100.1:/export /data
lab_check_output c2-identity-set '"client_id_set": true' nsmount mount --pid $C2 --json -o vers=4.2 192.0.2.1:/export /data
ID1=$(identity c1)
ID2=$(identity c2)
lab_log "identifiers after: c1='$ID1' c2='$ID2'"
lab_check identities-set test -n "$ID1" -a -n "$ID2"
lab_check identities-distinct test "$ID1" != "$ID2"
lab_check_output second-mount-keeps-identity "\"client_id\": \"$ID1\"" nsmount mount --pid $C1 --json --mkdir -o vers=4.1 198.51.100.1:/export /data2
lab_check_output identity-unchanged "$ID1" identity c1
nsmount umount --pid $C1 /data2

# Both clients keep working across more than one lease period (10 s).
lab_check c1-write lab_exec c1 sh -c 'echo one > /data/c1-a'
lab_check c2-write lab_exec c2 sh -c 'echo one > /data/c2-a'
sleep 12
lab_check c1-write-after-lease lab_exec c1 sh -c 'echo two > /data/c1-b && cat /data/c2-a'
lab_check c2-write-after-lease lab_exec c2 sh -c 'echo two > /data/c2-b && cat /data/c1-a'
lab_check_output server-has-both two sh -c 'cat /srv/srv1/c1-b /srv/srv1/c2-b'
lab_check_output c1-volume-in-its-netns v4 cat /proc/$C1/net/nfsfs/volumes
lab_check_output c2-volume-in-its-netns v4 cat /proc/$C2/net/nfsfs/volumes
lab_check umount-c1 nsmount umount --pid $C1 /data
lab_check umount-c2 nsmount umount --pid $C2 /data
lab_check no-leak-c1 no_leaks $C1
lab_check no-leak-c2 no_leaks $C2
