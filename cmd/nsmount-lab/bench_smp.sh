# nsmount-lab bench, third run (2 vCPUs): the concurrency figure of the
# second run (bench_1vcpu.sh), 16 mounts at once against one after
# another, on a guest with two virtual CPUs. bench_lib.sh is put before
# this file.
set -e
bench_step "2 vCPUs: setup, NFS server"
lab_netns srv1
lab_nfsd srv1 srv1
nsmount-lab time -n 1 --name "warm-up" -- true >/dev/null
bench_step "2 vCPUs: 16 mounts at once and one after another"
bench_concurrency " (2 vCPUs)"
