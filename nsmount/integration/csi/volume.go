package csi

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
)

// Volume context keys: the volume's attributes (a PersistentVolume's
// spec.csi.volumeAttributes, or an inline volume's volumeAttributes) and
// what kubelet adds for a CSIDriver with podInfoOnMount, over anything the
// volume's author wrote under the same keys.
const (
	// KeyServer is the NFS server: a host name, resolved as the pod
	// resolves it, or an IP address (IPv6 without brackets).
	KeyServer = "server"
	// KeyExport is the exported path: absolute and clean.
	KeyExport = "export"
	// KeyOptions are mount options as for mount.nfs(8), comma-separated.
	KeyOptions = "options"
	// KeyPodUID, KeyPodName and KeyPodNamespace name the pod (kubelet's
	// podInfoOnMount). The UID is required: it is how the mount finds the
	// pod's network namespace.
	KeyPodUID       = "csi.storage.k8s.io/pod.uid"
	KeyPodName      = "csi.storage.k8s.io/pod.name"
	KeyPodNamespace = "csi.storage.k8s.io/pod.namespace"
	// KeyEphemeral is "true" for an inline volume.
	KeyEphemeral = "csi.storage.k8s.io/ephemeral"
	// KeyServiceAccount is the pod's service account (accepted, unused).
	KeyServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
)

// Bounds of a NodePublishVolume request.
const (
	// MaxVolumeIDLen is the CSI spec's size limit of a volume ID.
	MaxVolumeIDLen = 128
	// MaxContextKeys bounds the volume context.
	MaxContextKeys = 16
	// maxValueLen bounds one volume context value.
	maxValueLen = 4096
)

// contextKeys are the keys a volume context may have.
var contextKeys = map[string]bool{
	KeyServer: true, KeyExport: true, KeyOptions: true,
	KeyPodUID: true, KeyPodName: true, KeyPodNamespace: true, KeyEphemeral: true, KeyServiceAccount: true,
}

// Pod is the pod a volume is published for.
type Pod struct {
	UID       string `json:"uid"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// String is "NAMESPACE/NAME (UID)".
func (p Pod) String() string { return fmt.Sprintf("%s/%s (%s)", p.Namespace, p.Name, p.UID) }

// Volume is a NodePublishVolume request, parsed and validated (ParseVolume)
// but not yet allowed by the host policy.
type Volume struct {
	// ID is the volume's ID (a PersistentVolume's volumeHandle; kubelet's
	// "csi-HASH" for an inline volume).
	ID string `json:"volume_id"`
	// TargetPath is kubelet's target path in the host's mount namespace.
	TargetPath string `json:"target_path"`
	// Source is the server and export.
	Source nsmount.Source `json:"-"`
	// FSType is "nfs" or "nfs4" (the capability's fs_type; "" is nfs).
	FSType string `json:"fstype"`
	// Options are the volume's options, then the capability's mount flags
	// (a PersistentVolume's mountOptions), then ro for a read-only volume.
	Options nsmount.Options `json:"-"`
	// ReadOnly is the request's readonly flag or a reader-only access mode.
	ReadOnly bool `json:"readonly,omitempty"`
	// Pod is the pod, from kubelet.
	Pod Pod `json:"pod"`
	// Ephemeral marks an inline volume (written in the pod by its author).
	Ephemeral bool `json:"ephemeral,omitempty"`
}

// CSIVolume is the volume as the host policy judges it.
func (v *Volume) CSIVolume() admission.CSIVolume {
	return admission.CSIVolume{
		Source: v.Source, FSType: v.FSType, Options: slices.Clone(v.Options),
		Target: v.TargetPath, Namespace: v.Pod.Namespace, Ephemeral: v.Ephemeral,
	}
}

// invalid is an nsmount.ErrInvalidArgument error.
func invalid(format string, args ...any) error {
	return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf(format, args...))
}

// ParseVolume checks a NodePublishVolume request's volume: everything in it
// is untrusted (an inline volume's attributes are written by any pod
// author) and refused with nsmount.ErrInvalidArgument and a one-line
// message naming the field, e.g. `volume context "export": "a/b": must be
// an absolute path`. Unknown volume context keys, block volumes, file
// system types other than nfs and nfs4, a missing pod UID (the CSIDriver
// needs podInfoOnMount: true) and a target path under kubelet's pods
// directory that names another pod than the pod UID are refused.
func ParseVolume(id, targetPath string, capability *csipb.VolumeCapability, readonly bool, volumeContext map[string]string) (*Volume, error) {
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := checkTargetPath("target path", targetPath); err != nil {
		return nil, err
	}
	v := &Volume{ID: id, TargetPath: targetPath, FSType: "nfs", ReadOnly: readonly}
	var flags []string
	switch {
	case capability == nil:
		return nil, invalid("volume capability: missing")
	case capability.GetBlock() != nil:
		return nil, invalid("volume capability: block volumes are not supported (NFS is a file system)")
	case capability.GetMount() == nil:
		return nil, invalid("volume capability: missing access type (want mount)")
	}
	m := capability.GetMount()
	switch m.GetFsType() {
	case "", "nfs":
	case "nfs4":
		v.FSType = "nfs4"
	default:
		return nil, invalid("volume capability: fs_type %q: want nfs or nfs4", m.GetFsType())
	}
	if m.GetVolumeMountGroup() != "" {
		return nil, invalid("volume capability: volume_mount_group is not supported")
	}
	flags = m.GetMountFlags()
	switch mode := capability.GetAccessMode().GetMode(); mode {
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER,
		csipb.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER:
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csipb.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		v.ReadOnly = true
	default:
		return nil, invalid("volume capability: access mode %s is not supported", mode)
	}
	if err := parseContext(v, volumeContext, flags); err != nil {
		return nil, err
	}
	return v, nil
}

// parseContext fills v from the volume context and the mount flags.
func parseContext(v *Volume, volumeContext map[string]string, flags []string) error {
	if len(volumeContext) > MaxContextKeys {
		return invalid("volume context: %d keys, more than %d", len(volumeContext), MaxContextKeys)
	}
	keys := make([]string, 0, len(volumeContext))
	for k := range volumeContext {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the first bad key named is always the same one
	for _, k := range keys {
		val := volumeContext[k]
		if !contextKeys[k] {
			return invalid("volume context: unknown key %q (known: server, export, options and kubelet's csi.storage.k8s.io/ pod keys)", printable(k))
		}
		if len(val) > maxValueLen {
			return invalid("volume context %q: %d bytes, more than %d", k, len(val), maxValueLen)
		}
		if !utf8.ValidString(val) || strings.ContainsFunc(val, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return invalid("volume context %q: control character or invalid UTF-8", k)
		}
	}
	bad := func(key string, err error) error {
		return invalid("volume context %q: %q: %s", key, printable(volumeContext[key]), oneLine(err))
	}
	server, ok := volumeContext[KeyServer]
	if !ok {
		return invalid("volume context %q: missing", KeyServer)
	}
	if err := admission.CheckServer(server); err != nil {
		return bad(KeyServer, err)
	}
	export, ok := volumeContext[KeyExport]
	if !ok {
		return invalid("volume context %q: missing", KeyExport)
	}
	if err := admission.CheckPath(export); err != nil {
		return bad(KeyExport, err)
	}
	v.Source = nsmount.Source{Server: server, Export: export}
	opts, err := nsmount.ParseOptions(volumeContext[KeyOptions])
	if err != nil {
		return bad(KeyOptions, err)
	}
	for i, f := range flags {
		fo, err := nsmount.ParseOptions(f)
		if err != nil || f == "" {
			if err == nil {
				err = errors.New("empty")
			}
			return invalid("volume capability: mount_flags[%d] %q: %s", i, printable(f), oneLine(err))
		}
		opts = append(opts, fo...)
	}
	if v.ReadOnly {
		for _, o := range opts {
			if o.Key == "rw" {
				return invalid("volume is read-only, but its options ask for rw")
			}
		}
		if !slices.Contains(opts, nsmount.Option{Key: "ro"}) {
			opts = append(opts, nsmount.Option{Key: "ro"})
		}
	}
	if err := nsmount.ValidateMount(v.FSType, v.Source, opts); err != nil {
		return invalid("volume options %q: %s", opts, oneLine(err))
	}
	v.Options = opts

	uid, ok := volumeContext[KeyPodUID]
	if !ok {
		return invalid("volume context %q: missing (the CSIDriver nfs.nsmount.io needs podInfoOnMount: true: the pod's UID finds its network namespace)", KeyPodUID)
	}
	if !validUID(uid) {
		return bad(KeyPodUID, errors.New("not a pod UID (RFC 4122 form, lowercase)"))
	}
	ns := volumeContext[KeyPodNamespace]
	if !admission.ValidNamespace(ns) {
		return bad(KeyPodNamespace, errors.New("missing or not a namespace name"))
	}
	name := volumeContext[KeyPodName]
	if !validSubdomain(name) {
		return bad(KeyPodName, errors.New("missing or not a pod name"))
	}
	if sa, ok := volumeContext[KeyServiceAccount]; ok && !validSubdomain(sa) {
		return bad(KeyServiceAccount, errors.New("not a service account name"))
	}
	v.Pod = Pod{UID: uid, Name: name, Namespace: ns}
	switch e := volumeContext[KeyEphemeral]; e {
	case "", "false":
	case "true":
		v.Ephemeral = true
	default:
		return bad(KeyEphemeral, errors.New("want true or false"))
	}
	if other, ok := kubeletPodUID(v.TargetPath); ok && other != uid {
		return invalid("target path %s is pod %s's, not pod %s's (volume context %q)", v.TargetPath, other, uid, KeyPodUID)
	}
	return nil
}

// checkVolumeID accepts a volume ID of the CSI spec's size, printable.
func checkVolumeID(id string) error {
	switch {
	case id == "":
		return invalid("volume ID: missing")
	case len(id) > MaxVolumeIDLen:
		return invalid("volume ID: %d bytes, more than %d", len(id), MaxVolumeIDLen)
	case !utf8.ValidString(id) || strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return invalid("volume ID %q: control character or invalid UTF-8", printable(id))
	}
	return nil
}

// checkTargetPath checks a path kubelet gives: absolute, clean, not "/".
func checkTargetPath(what, p string) error {
	if p == "" {
		return invalid("%s: missing", what)
	}
	if err := admission.CheckPath(p); err != nil {
		return invalid("%s %q: %s", what, printable(p), err)
	}
	if p == "/" {
		return invalid("%s: / can never be a mount target", what)
	}
	return nil
}

// validUID reports whether s is a Kubernetes UID as kubelet gives it: an
// RFC 4122 UUID in lowercase hexadecimal.
func validUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// validSubdomain reports whether s is a DNS subdomain name as Kubernetes
// object names are (lowercase letters, digits, '-' and '.', at most 253).
func validSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if !admission.ValidNamespace(label) {
			return false
		}
	}
	return true
}

// kubeletPodUID returns the pod UID in a target path of kubelet's layout,
// ".../pods/UID/volumes/kubernetes.io~csi/NAME/mount".
func kubeletPodUID(targetPath string) (string, bool) {
	parts := strings.Split(targetPath, "/")
	for i := 0; i+3 < len(parts); i++ {
		if parts[i] == "pods" && parts[i+2] == "volumes" && parts[i+3] == "kubernetes.io~csi" {
			return parts[i+1], true
		}
	}
	return "", false
}

// printable quotes at most 80 bytes of s for a message.
func printable(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// oneLine joins an error's text onto one line.
func oneLine(err error) string { return report.OneLine(err.Error()) }
