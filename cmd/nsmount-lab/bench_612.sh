# nsmount-lab bench, fourth run (Debian 12's 6.12 kernel): a route change
# to another server at the same address under nsmount watch, there and
# back, as in the main run on 6.1. bench_lib.sh is put before this file.
set -e
bench_step "6.12: route change under nsmount watch"
bench_watch_setup
bench_route_change " (6.12)"
kill $WATCH
wait $WATCH || true
nsmount umount --pid $C2 /data
