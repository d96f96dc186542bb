package nsmount

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Source is the NFS server and export of a mount, "SERVER:/EXPORT".
type Source struct {
	// Server is a host name or an IP literal (IPv6 without brackets).
	Server string
	// Export is the absolute path exported by the server.
	Export string
}

// String formats the source as the kernel and mount(8) show it, with an IPv6
// literal in brackets.
func (s Source) String() string {
	if a, err := netip.ParseAddr(s.Server); err == nil && a.Is6() {
		return "[" + s.Server + "]:" + s.Export
	}
	return s.Server + ":" + s.Export
}

// ParseSource parses SERVER:/EXPORT. An IPv6 server must be in brackets:
// [2001:db8::1]:/export.
func ParseSource(s string) (Source, error) {
	bad := func(why string) (Source, error) {
		return Source{}, withClass(ErrInvalidArgument, fmt.Errorf("invalid source %q: %s (want SERVER:/EXPORT)", s, why))
	}
	if len(s) > 4096 {
		return bad("too long")
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return bad("control character")
	}
	var server, export string
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 || !strings.HasPrefix(s[end+1:], ":") {
			return bad("unterminated IPv6 literal")
		}
		server, export = s[1:end], s[end+2:]
		if a, err := netip.ParseAddr(server); err != nil || !a.Is6() {
			return bad("not an IPv6 address in brackets")
		}
	} else {
		i := strings.Index(s, ":/")
		if i < 0 {
			return bad("missing :/EXPORT")
		}
		server, export = s[:i], s[i+1:]
		if strings.Contains(server, ":") {
			return bad("IPv6 server address must be in brackets")
		}
	}
	if server == "" {
		return bad("empty server")
	}
	if _, err := netip.ParseAddr(server); err != nil && !validHostname(server) {
		return bad("server is neither an IP address nor a host name")
	}
	if !strings.HasPrefix(export, "/") {
		return bad("export must be an absolute path")
	}
	return Source{Server: server, Export: export}, nil
}

// validHostname reports whether name is a syntactically valid DNS host name.
func validHostname(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// Option is one mount option: a flag ("nolock") or a key=value pair.
type Option struct {
	Key   string
	Value string
	// HasValue distinguishes "key=" from a flag.
	HasValue bool
}

// String formats the option as in an -o list.
func (o Option) String() string {
	if o.HasValue {
		return o.Key + "=" + o.Value
	}
	return o.Key
}

// Options is an ordered list of mount options.
type Options []Option

// String formats the options as a comma-separated -o list.
func (opts Options) String() string {
	s := make([]string, len(opts))
	for i, o := range opts {
		s[i] = o.String()
	}
	return strings.Join(s, ",")
}

// Get returns the value of the last option named key.
func (opts Options) Get(key string) (string, bool) {
	for i := len(opts) - 1; i >= 0; i-- {
		if opts[i].Key == key {
			return opts[i].Value, true
		}
	}
	return "", false
}

// ParseOptions parses a comma-separated mount option list such as
// "vers=4.2,nolock,ro". An empty string is no options.
func ParseOptions(s string) (Options, error) {
	if s == "" {
		return nil, nil
	}
	if len(s) > 4096 {
		return nil, withClass(ErrInvalidArgument, fmt.Errorf("mount options too long (%d bytes)", len(s)))
	}
	var opts Options
	for _, field := range strings.Split(s, ",") {
		key, value, hasValue := strings.Cut(field, "=")
		if key == "" {
			return nil, withClass(ErrInvalidArgument, fmt.Errorf("invalid mount options %q: empty option", s))
		}
		for _, r := range key {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
				return nil, withClass(ErrInvalidArgument, fmt.Errorf("invalid mount option %q: bad character in name", field))
			}
		}
		if strings.ContainsFunc(value, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, withClass(ErrInvalidArgument, fmt.Errorf("invalid mount option %q: control character in value", key))
		}
		opts = append(opts, Option{Key: key, Value: value, HasValue: hasValue})
	}
	return opts, nil
}

// mountAttrs maps per-mount (not per-superblock) options to the mount
// attribute they set (set=true) or clear.
var mountAttrs = map[string]struct {
	attr uint64
	set  bool
}{
	"ro":          {unix.MOUNT_ATTR_RDONLY, true},
	"rw":          {unix.MOUNT_ATTR_RDONLY, false},
	"nosuid":      {unix.MOUNT_ATTR_NOSUID, true},
	"suid":        {unix.MOUNT_ATTR_NOSUID, false},
	"nodev":       {unix.MOUNT_ATTR_NODEV, true},
	"dev":         {unix.MOUNT_ATTR_NODEV, false},
	"noexec":      {unix.MOUNT_ATTR_NOEXEC, true},
	"exec":        {unix.MOUNT_ATTR_NOEXEC, false},
	"nodiratime":  {unix.MOUNT_ATTR_NODIRATIME, true},
	"diratime":    {unix.MOUNT_ATTR_NODIRATIME, false},
	"noatime":     {unix.MOUNT_ATTR_NOATIME, true},
	"relatime":    {unix.MOUNT_ATTR_RELATIME, true},
	"strictatime": {unix.MOUNT_ATTR_STRICTATIME, true},
}

// sbFlags are superblock flags that the VFS accepts as fsconfig flags.
// "rw" clears a read-only flag given earlier in the list.
var sbFlags = map[string]bool{"ro": true, "rw": true, "sync": true, "dirsync": true, "lazytime": true}

// ignored are options that only mean something to fstab or mount(8).
var ignored = map[string]bool{"defaults": true, "auto": true, "noauto": true, "_netdev": true, "nofail": true, "user": true, "nouser": true}

// reserved options are chosen by nsmount and may not be given.
var reserved = map[string]string{
	"addr":   "the server address is resolved from SERVER inside the target",
	"source": "the source is SERVER:/EXPORT",
}

// versions lists NFS versions in the order tried when none is given.
var versions = []string{"4.2", "4.1", "4.0", "3"}

// mountSpec is what the kernel is asked for: a filesystem type, its fs
// parameters (fsconfig), and the mount attributes (fsmount).
type mountSpec struct {
	FSType string   `json:"fstype"`
	Params Options  `json:"params"`
	Attrs  uint64   `json:"attrs"`
	Vers   []string `json:"vers"` // versions to try in order; one when the user chose
}

// buildSpec turns a request into a mountSpec: addr= is the address nsmount
// chose, clientaddr= (NFSv4) the source address the target's routing picks,
// nosuid and nodev are on unless explicitly turned off.
func buildSpec(fstype string, src Source, opts Options, addr, clientAddr netip.Addr) (mountSpec, error) {
	spec := mountSpec{FSType: fstype, Attrs: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	switch fstype {
	case "nfs", "nfs4":
	default:
		return spec, withClass(ErrInvalidArgument, fmt.Errorf("unsupported filesystem type %q (want nfs or nfs4)", fstype))
	}
	var vers string
	userClientAddr := false
	for _, o := range opts {
		if why, ok := reserved[o.Key]; ok {
			return spec, withClass(ErrInvalidArgument, fmt.Errorf("option %q is not allowed: %s", o.Key, why))
		}
		if ignored[o.Key] {
			continue
		}
		if a, ok := mountAttrs[o.Key]; ok && !o.HasValue {
			if a.set {
				spec.Attrs |= a.attr
			} else {
				spec.Attrs &^= a.attr
			}
			if o.Key == "relatime" || o.Key == "strictatime" || o.Key == "noatime" {
				spec.Attrs &^= unix.MOUNT_ATTR__ATIME
				spec.Attrs |= a.attr
			}
			if !sbFlags[o.Key] {
				continue
			}
		}
		switch o.Key {
		case "vers", "nfsvers":
			if !o.HasValue || o.Value == "" {
				return spec, withClass(ErrInvalidArgument, fmt.Errorf("option %q needs a value", o.Key))
			}
			vers = normalizeVers(o.Value)
			if vers == "" {
				return spec, withClass(ErrInvalidArgument, fmt.Errorf("unsupported NFS version %q (want 3, 4, 4.0, 4.1 or 4.2)", o.Value))
			}
			continue
		case "minorversion":
			return spec, withClass(ErrInvalidArgument, fmt.Errorf("option minorversion is not supported: use vers=4.N"))
		case "clientaddr":
			if _, err := netip.ParseAddr(o.Value); err != nil {
				return spec, withClass(ErrInvalidArgument, fmt.Errorf("option clientaddr=%q is not an IP address", o.Value))
			}
			userClientAddr = true
		}
		spec.Params = append(spec.Params, o)
	}
	switch {
	case vers == "3" && fstype == "nfs4":
		return spec, withClass(ErrInvalidArgument, fmt.Errorf("type nfs4 cannot mount NFS version 3"))
	case vers != "":
		spec.Vers = []string{vers}
	case fstype == "nfs4":
		spec.Vers = slices.Clone(versions[:3])
	default:
		spec.Vers = slices.Clone(versions)
	}
	spec.Params = append(Options{{Key: "source", Value: src.String(), HasValue: true}, {Key: "addr", Value: addr.String(), HasValue: true}}, spec.Params...)
	if !userClientAddr && clientAddr.IsValid() && spec.Vers[0] != "3" {
		spec.Params = append(spec.Params, Option{Key: "clientaddr", Value: clientAddr.String(), HasValue: true})
	}
	return spec, nil
}

// normalizeVers returns the canonical form of an NFS version, or "".
func normalizeVers(v string) string {
	switch v {
	case "3":
		return "3"
	case "4", "4.0":
		return "4.0"
	case "4.1", "4.2":
		return v
	}
	return ""
}

// withVers returns params for one version attempt: "vers=V" added, and for
// NFSv3 the NFSv4-only clientaddr= dropped.
func (s mountSpec) withVers(v string) Options {
	out := make(Options, 0, len(s.Params)+1)
	for _, o := range s.Params {
		if v == "3" && o.Key == "clientaddr" {
			continue
		}
		out = append(out, o)
	}
	return append(out, Option{Key: "vers", Value: v, HasValue: true})
}

// ValidHostname reports whether name is a syntactically valid DNS host
// name (letters, digits, '-' and '_' in labels of 1-63 bytes, at most 253
// bytes, an optional trailing dot).
func ValidHostname(name string) bool { return validHostname(name) }

// ValidateMount checks what a mount of src with fstype and opts would give
// the kernel, as Explain does before it touches the network: the type, the
// version, and options nsmount chooses itself (addr=) or refuses. Errors
// are ErrInvalidArgument.
func ValidateMount(fstype string, src Source, opts Options) error {
	_, err := buildSpec(fstype, src, opts, netip.IPv6Unspecified(), netip.Addr{})
	return err
}

// ReservedOption reports whether the mount option key is chosen by nsmount
// and may not be given, and why.
func ReservedOption(key string) (why string, ok bool) {
	why, ok = reserved[key]
	return why, ok
}

// NormalizeVersion returns the canonical form of an NFS version as vers=
// takes it ("4" is "4.0"), or "" for a version nsmount does not mount.
func NormalizeVersion(v string) string { return normalizeVers(v) }
