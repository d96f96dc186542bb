# nsmount-lab bench, second run (1 vCPU): 16 mounts at once against one
# after another (goal 4a), and the kernel's own mount the same way, in a
# VM that does nothing else. In the main run, after watch's 2000 mount
# cycles, the same figure read about 0.05 worse for nsmount and for the
# kernel's mount alike, and one after another varied 1.06-1.44 s within
# one run. bench_smp.sh measures the same with 2 vCPUs (goal 4b).
# bench_lib.sh is put before this file.
set -e
bench_step "1 vCPU: setup, NFS server"
lab_netns srv1
lab_nfsd srv1 srv1
nsmount-lab time -n 1 --name "warm-up" -- true >/dev/null
bench_step "1 vCPU: 16 mounts at once and one after another"
bench_concurrency ""
