# Bad input and faults: every one gives a one-line error, its own exit code,
# in bounded time, and leaves no mount, client or helper process behind.
set -u
one_server_one_container

# Symlinks in the target path are resolved inside the container's root.
lab_exec c1 ln -s / /escape-root
lab_exec c1 ln -s ../../../.. /escape-up
check_exit symlink-to-root-refused 5 nsmount mount --pid $PID $S:/export /escape-root
check_exit symlink-dotdot-refused 5 nsmount mount --pid $PID $S:/export /escape-up
mkdir -p /vm-only
lab_exec c1 ln -s /../../../vm-only /escape-host
check_exit symlink-to-vm-dir-missing-in-container 5 nsmount mount --pid $PID $S:/export /escape-host
# A dangling symlink is not followed into creating directories (mkdir -p
# semantics), even with --mkdir.
check_exit dangling-symlink-mkdir-refused 5 nsmount mount --pid $PID --mkdir $S:/export /escape-host
# Once the directory exists in the container, the symlink leads there: the
# mount lands in the container's /vm-only, never the VM's.
lab_exec c1 mkdir /vm-only
lab_check symlink-resolved-inside-root nsmount mount --pid $PID $S:/export /escape-host
lab_check mounted-inside-container lab_exec c1 test -f /vm-only/whoami
lab_check_fails vm-dir-untouched test -e /vm-only/whoami
lab_check umount-inside nsmount umount --pid $PID /escape-host
lab_check no-leak-symlinks no_leaks $PID

# Bad targets and sources.
sh -c 'exit 0' &
DEAD=$!
wait $DEAD
check_exit dead-pid 4 nsmount mount --pid $DEAD $S:/export /data
check_exit bad-netns-path 4 nsmount mount --netns /run/netns/nope --mntns /proc/$PID/ns/mnt $S:/export /data
check_exit malformed-export 3 nsmount mount --pid $PID $S:export /data
check_exit malformed-server 3 nsmount mount --pid $PID 'bad_host!:/export' /data
check_exit bad-version 3 nsmount mount --pid $PID -o vers=9 $S:/export /data
check_exit unknown-option-kernel-says 3 nsmount mount --pid $PID -o bogus $S:/export /data
lab_check_output unknown-option-kernel-text 'Unknown parameter' sh -c "nsmount mount --pid $PID -o bogus $S:/export /data 2>&1; true"
check_exit missing-export 7 nsmount mount --pid $PID $S:/no/such/export /data
check_exit target-is-file 5 nsmount mount --pid $PID $S:/export /etc/hosts
check_exit missing-target 5 nsmount mount --pid $PID $S:/export /no/such/dir
check_exit umount-not-mounted 10 nsmount umount --pid $PID /data
check_exit usage 2 nsmount mount --pid $PID
lab_check no-leak-bad-input no_leaks $PID

# An address with nothing behind it: bounded by --timeout.
t0=$(date +%s)
check_exit unreachable-host 6 nsmount mount --pid $PID --timeout 2s 198.51.100.77:/export /data
t1=$(date +%s)
lab_log "unreachable host reported after $((t1 - t0)) s (--timeout 2s)"
lab_check unreachable-bounded test $((t1 - t0)) -le 10
check_exit no-route 6 nsmount mount --pid $PID 203.0.113.1:/export /data
check_exit refused 6 nsmount mount --pid $PID -o port=2050 $S:/export /data

# A server that accepts the connection and never answers: the mount is
# stopped at --mount-timeout, nothing is attached, no helper is left.
nsenter --net=/run/netns/c1 busybox nc -ll -p 2049 -e busybox sleep 600 &
NC=$!
sleep 0.3
t0=$(date +%s)
check_exit hung-server-times-out 9 nsmount mount --pid $PID -t nfs4 -o vers=4.2 --mount-timeout 3s 127.0.0.1:/export /data
t1=$(date +%s)
lab_log "hung server reported after $((t1 - t0)) s (--mount-timeout 3s)"
lab_check hung-bounded test $((t1 - t0)) -le 10
kill $NC 2>/dev/null
lab_check_output hung-nothing-mounted 0 nfs_mounts /proc/$PID/mountinfo
lab_check_fails hung-no-helper-left sh -c 'ps -o pid,args | grep "[n]smount-helper"'
# The kernel drops the half-made client once its last request dies.
sleep 1
lab_check no-leak-at-end no_leaks $PID
