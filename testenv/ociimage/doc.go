// Package ociimage writes a busybox container image as an OCI image layout
// (a tar stream) that containerd imports without a registry: one
// uncompressed layer with a static busybox, a symlink per applet and the
// directories a runtime mounts over. The same busybox always gives the same
// bytes, so the same digests.
package ociimage
