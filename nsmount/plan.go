package nsmount

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/nsmount/nsmount/routing"
	"github.com/nsmount/nsmount/routing/resolver"
)

// DefaultNFSPort is the NFS server port when a mount names none (port=).
const DefaultNFSPort = 2049

// Where names are resolved.
const (
	// ResolveFromContainer resolves with the container's /etc/hosts and
	// /etc/resolv.conf, querying its nameservers from its netns (default).
	ResolveFromContainer = "container"
	// ResolveFromHost resolves with the host's files and network: an
	// explicit opt-out for names that only the host knows.
	ResolveFromHost = "host"
)

// Plan is nsmount's decision for one mount, as `nsmount route` explains it
// and Mount carries it out: how the server name was resolved, which
// addresses were considered with their routes and preflight checks, the
// address chosen, and the filesystem parameters the kernel will get.
type Plan struct {
	// Target describes the target; PID, NetNS and MountNS identify it.
	Target  string `json:"target"`
	PID     int    `json:"pid,omitempty"`
	NetNS   uint64 `json:"netns"`
	MountNS uint64 `json:"mntns"`
	// Source is SERVER:/EXPORT as given.
	Source string `json:"source"`
	// ResolveFrom is "container" or "host".
	ResolveFrom string `json:"resolve_from"`
	// Resolver is the resolver configuration used (nil for an IP literal).
	Resolver *resolver.ResolvConf `json:"resolver,omitempty"`
	// Resolution is the answer, with every query made.
	Resolution *resolver.Resolution `json:"resolution,omitempty"`
	// Family is the address family allowed (proto=tcp: ipv4, tcp6: ipv6).
	Family string `json:"family"`
	// Candidates are the addresses considered, in order.
	Candidates []routing.Candidate `json:"candidates"`
	// Address and Route are the chosen address and its route.
	Address netip.Addr     `json:"address,omitzero"`
	Route   *routing.Route `json:"route,omitempty"`
	// FSType and Versions: the filesystem type and NFS versions to try.
	FSType   string   `json:"fstype"`
	Versions []string `json:"versions"`
	// Params are the filesystem parameters for the first version tried.
	Params string `json:"params,omitempty"`
	// Mountpoint is where the mount goes, a path inside the container's
	// root ("" for a plan that only explains the route); Mkdir allows
	// creating it.
	Mountpoint string `json:"mountpoint,omitempty"`
	Mkdir      bool   `json:"mkdir,omitempty"`
	// NFSPort is the server's NFS port the preflight checked (port=, else
	// 2049): later reachability checks of the mount probe the same port.
	NFSPort uint16 `json:"nfs_port,omitempty"`
	// Error is why no mount can be made, if so.
	Error string `json:"error,omitempty"`

	spec         mountSpec
	mountTimeout time.Duration
	netns        NSID // of the target the plan was made for
}

// usable checks that p is a complete plan made for t.
func (p *Plan) usable(t *Target) error {
	switch {
	case p == nil || p.Error != "" || p.Route == nil || len(p.spec.Vers) == 0:
		return withClass(ErrInvalidArgument, errors.New("no usable mount plan (Explain failed or was not called)"))
	case p.Mountpoint == "":
		return withClass(ErrInvalidArgument, errors.New("mount plan has no mount point"))
	case p.netns != t.NetNS():
		return withClass(ErrInvalidArgument, fmt.Errorf("mount plan was made for another network namespace than %s", t))
	}
	return nil
}

// Explain makes the decision for req in t without mounting: it resolves
// the server (from the container unless req.ResolveFrom is "host"), looks up
// the route to each address inside t's netns, runs the preflight checks
// (bounded by req.ProbeTimeout) and builds the mount parameters. The plan is
// returned also when err is not nil, showing how far it got.
func Explain(ctx context.Context, t *Target, req Request) (*Plan, error) {
	if req.FSType == "" {
		req.FSType = "nfs"
	}
	p := &Plan{
		Target: t.String(), PID: t.PID(), NetNS: t.NetNSInode(), MountNS: t.MountNSInode(),
		Source: req.Source.String(), ResolveFrom: req.ResolveFrom, FSType: req.FSType,
		Mountpoint: req.Target, Mkdir: req.Mkdir,
		mountTimeout: req.MountTimeout, netns: t.NetNS(),
	}
	if p.ResolveFrom == "" {
		p.ResolveFrom = ResolveFromContainer
	}
	fail := func(err error) (*Plan, error) {
		p.Error = err.Error()
		return p, err
	}
	// Everything the user gave is validated before touching the network.
	spec, err := buildSpec(req.FSType, req.Source, req.Options, netip.IPv6Unspecified(), netip.Addr{})
	if err != nil {
		return fail(err)
	}
	p.Versions = spec.Vers
	fam, err := familyOf(req.Options)
	if err != nil {
		return fail(err)
	}
	p.Family = fam.String()
	pf := preflightOf(spec, req.ProbeTimeout)
	p.NFSPort = pf.NFSPort
	if req.Target != "" {
		// The mount point exists (or may be made) inside the container's
		// root: a bad target fails before any network traffic.
		if err := checkMountpoint(t, req.Target, req.Mkdir); err != nil {
			return fail(err)
		}
	}
	inNetNS := func(fn func() error) error { return t.Do(NetNS, fn) }

	addrs, err := p.resolve(ctx, t, req, inNetNS)
	if err != nil {
		return fail(err)
	}
	router, err := routing.NewRouter(inNetNS)
	if err != nil {
		return fail(err)
	}
	defer router.Close()
	cands, err := router.Choose(ctx, addrs, fam, pf)
	p.Candidates = cands
	if err != nil {
		return fail(withClass(ErrUnreachable, fmt.Errorf("server %s from %s: %w", req.Source.Server, t, err)))
	}
	chosen := cands[len(cands)-1]
	p.Address, p.Route = chosen.Addr, chosen.Route
	if p.spec, err = buildSpec(req.FSType, req.Source, req.Options, chosen.Addr, chosen.Route.Source); err != nil {
		return fail(err)
	}
	p.Params = p.spec.withVers(p.spec.Vers[0]).String()
	return p, nil
}

// resolve fills in the resolver parts of p and returns the addresses.
func (p *Plan) resolve(ctx context.Context, t *Target, req Request, inNetNS routing.InNetNS) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(req.Source.Server); err == nil {
		p.Resolution = &resolver.Resolution{Name: req.Source.Server, FQDN: req.Source.Server, Source: "literal", Addrs: []netip.Addr{a.Unmap()}}
		return p.Resolution.Addrs, nil
	}
	var root *os.File
	var err error
	switch p.ResolveFrom {
	case ResolveFromContainer:
		root, err = t.resolverRoot()
	case ResolveFromHost:
		root, err = openPath("/")
		inNetNS = func(fn func() error) error { return fn() }
	default:
		return nil, withClass(ErrInvalidArgument, fmt.Errorf("--resolve-from %q: want container or host", p.ResolveFrom))
	}
	if err != nil {
		return nil, err
	}
	defer root.Close()
	conf, hosts, err := resolver.ReadResolverFiles(root)
	if err != nil {
		return nil, withClass(ErrInvalidArgument, fmt.Errorf("resolver files of %s: %w", p.describeResolver(t), err))
	}
	p.Resolver = conf
	res := &resolver.Resolver{Conf: conf, Hosts: hosts, In: inNetNS}
	r, err := res.Resolve(ctx, req.Source.Server)
	p.Resolution = r
	if err != nil {
		return nil, withClass(ErrUnreachable, fmt.Errorf("%s: %w", p.describeResolver(t), err))
	}
	return r.Addrs, nil
}

func (p *Plan) describeResolver(t *Target) string {
	if p.ResolveFrom == ResolveFromHost {
		return "host resolver"
	}
	return "resolver of " + t.String()
}

// familyOf derives the address family from proto= (as mount.nfs does).
func familyOf(opts Options) (routing.Family, error) {
	proto, ok := opts.Get("proto")
	if !ok {
		return routing.AnyFamily, nil
	}
	switch proto {
	case "tcp", "udp", "rdma":
		return routing.IPv4, nil
	case "tcp6", "udp6", "rdma6":
		return routing.IPv6, nil
	}
	return 0, withClass(ErrInvalidArgument, fmt.Errorf("option proto=%q: want tcp, tcp6, udp, udp6, rdma or rdma6", proto))
}

// preflightOf derives the reachability checks from the mount parameters.
func preflightOf(spec mountSpec, timeout time.Duration) routing.Preflight {
	pf := routing.Preflight{NFSPort: DefaultNFSPort, Timeout: orDefault(timeout, DefaultProbeTimeout)}
	if v, ok := spec.Params.Get("port"); ok {
		if n, err := strconv.ParseUint(v, 10, 16); err == nil && n != 0 {
			pf.NFSPort = uint16(n)
		}
	}
	if spec.Vers[0] == "3" {
		pf.V3 = true
		if v, ok := spec.Params.Get("mountport"); ok {
			if n, err := strconv.ParseUint(v, 10, 16); err == nil {
				pf.MountPort = uint16(n)
			}
		}
	}
	return pf
}

// checkMountpoint checks, without creating anything, that unsafePath is a
// directory inside t's root that a mount may cover, or, with mkdir, that
// it is missing (it is made inside the root at mount time).
func checkMountpoint(t *Target, unsafePath string, mkdir bool) error {
	if t.mntns == nil {
		return withClass(ErrInvalidArgument, fmt.Errorf("%s has no mount namespace to mount in", t))
	}
	root, err := t.rootDir()
	if err != nil {
		return err
	}
	defer root.Close()
	f, err := openInRoot(root, unsafePath, false)
	if mkdir && errors.Is(err, errMountpointMissing) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// rootDir returns an O_PATH descriptor of the container's root: the
// process's root for a PID target, else the mount namespace's root.
func (t *Target) rootDir() (*os.File, error) {
	if t.root != nil {
		fd, err := dupCloexec(t.root)
		if err != nil {
			return nil, fmt.Errorf("dup root of %s: %w", t, err)
		}
		return fd, nil
	}
	if t.mntns == nil {
		return nil, withClass(ErrInvalidArgument, fmt.Errorf("%s has no mount namespace to read resolver files from", t))
	}
	var root *os.File
	err := t.Do(MountNS, func() error {
		var err error
		root, err = openPath("/")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open root of %s: %w", t, err)
	}
	return root, nil
}
