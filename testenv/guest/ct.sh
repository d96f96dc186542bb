# Container setup (/usr/lib/nsmount-lab/ct.sh NAME ROOT), run by lab_container
# in the container's fresh mount and UTS namespaces (already in its netns).
set -e
name=$1
root=$2
hostname "$name"
mount --make-rprivate /
mount -t devtmpfs devtmpfs "$root/dev"
cd "$root"
pivot_root . .oldroot
cd /
/bin/busybox mount -t proc proc /proc
/bin/busybox umount -l /.oldroot
/bin/busybox rmdir /.oldroot
exec /bin/sleep 2147483647
