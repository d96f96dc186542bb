package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/routing/resolver"
)

// cniPluginName is the program name (argv[0] base name) under which nsmount
// runs as a CNI plugin, and the "type" of its network configuration.
const cniPluginName = "nsmount-cni"

// cniVersions are the CNI spec versions the plugin speaks: every version
// with chained plugins (prevResult), up to 1.0.0.
var cniVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0")

// Limits of the plugin configuration.
const (
	maxCNIServers      = 16
	maxCNITimeout      = time.Minute
	defaultCNIStateDir = "/run/nsmount"
)

// cniExit maps CNI error codes to exit statuses: nsmount's own (3 for a bad
// configuration or environment, 4 for a missing netns or record, 100+N for
// nsmount error class N), 1 for the rest.
func cniExit(e *types.Error) int {
	switch {
	case e.Code >= 100 && e.Code < 200:
		return int(e.Code - 100)
	case e.Code == types.ErrInvalidNetNS:
		return 4
	case e.Code >= types.ErrIncompatibleCNIVersion && e.Code <= types.ErrInvalidNetworkConfig && e.Code != types.ErrIOFailure:
		return 3
	}
	return 1
}

// runCNIPlugin runs the process as the CNI plugin and exits. The result or
// the CNI error JSON goes to stdout, warnings to stderr.
func runCNIPlugin() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	p := &cniPlugin{ctx: ctx, stdout: os.Stdout, stderr: os.Stderr}
	err := skel.PluginMainFuncsWithError(skel.CNIFuncs{Add: p.add, Check: p.check, Del: p.del}, cniVersions,
		"nsmount-cni: CNI chained plugin of nsmount: checks and records how the container's netns reaches its NFS servers")
	stop()
	if err != nil {
		err.Msg = oneLine(err.Msg)
		if perr := err.Print(); perr != nil {
			fmt.Fprintf(os.Stderr, "nsmount-cni: %s\n", err.Msg)
		}
		os.Exit(cniExit(err))
	}
	os.Exit(0)
}

// cniConfig is the plugin's network configuration. Unknown fields are
// refused.
type cniConfig struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Type       string `json:"type"`
	// Servers are the NFS servers, "HOST[:PORT]".
	Servers []string `json:"servers"`
	// Timeout bounds, per server, the name resolution and, separately,
	// the route lookups and probes (default 5s).
	Timeout string `json:"timeout,omitempty"`
	// StateDir holds the records, in StateDir/cni (default /run/nsmount).
	StateDir string `json:"stateDir,omitempty"`
	// Required: ADD fails when a server is unreachable (default: it is
	// recorded as unreachable and ADD succeeds).
	Required bool `json:"required,omitempty"`
	// DNS resolves server names when prevResult has no nameservers.
	DNS *types.DNS `json:"dns,omitempty"`
	// PrevResult is the result of the previous plugins.
	PrevResult map[string]any `json:"prevResult,omitempty"`
	// RuntimeConfig and Args are CNI conventions that runtimes may add;
	// they are accepted and unused.
	RuntimeConfig json.RawMessage `json:"runtimeConfig,omitempty"`
	Args          json.RawMessage `json:"args,omitempty"`

	servers    []nsmount.ServerAddr
	timeout    time.Duration
	dns        *resolver.ResolvConf // from the "dns" field; nil without one
	prevResult types.Result
}

// parseCNIConfig decodes and validates the plugin configuration.
func parseCNIConfig(data []byte) (*cniConfig, error) {
	bad := func(format string, args ...any) (*cniConfig, error) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "nsmount-cni config: "+fmt.Sprintf(format, args...), "")
	}
	var c cniConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return bad("%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return bad("data after the JSON object")
	}
	if len(c.Servers) == 0 {
		return bad(`"servers" is empty: list at least one NFS server, "HOST[:PORT]"`)
	}
	if len(c.Servers) > maxCNIServers {
		return bad(`%d servers: at most %d`, len(c.Servers), maxCNIServers)
	}
	seen := map[nsmount.ServerAddr]bool{}
	for _, s := range c.Servers {
		sa, err := nsmount.ParseServerAddr(s)
		if err != nil {
			return bad("%v", err)
		}
		if seen[sa] {
			return bad("server %s listed twice", sa)
		}
		seen[sa] = true
		c.servers = append(c.servers, sa)
	}
	c.timeout = nsmount.DefaultProbeTimeout
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d <= 0 || d > maxCNITimeout {
			return bad("timeout %q: want a duration from 1ms to %v, like \"5s\"", c.Timeout, maxCNITimeout)
		}
		c.timeout = d
	}
	if c.StateDir == "" {
		c.StateDir = defaultCNIStateDir
	}
	if !filepath.IsAbs(c.StateDir) || filepath.Clean(c.StateDir) != c.StateDir || c.StateDir == "/" {
		return bad("stateDir %q: want a clean absolute path other than /", c.StateDir)
	}
	if c.DNS != nil && !c.DNS.IsEmpty() {
		rc, err := resolvConfOf(c.DNS)
		if err != nil {
			return bad("dns: %v", err)
		}
		c.dns = rc
	}
	if c.PrevResult != nil {
		nc := &types.PluginConf{CNIVersion: c.CNIVersion, RawPrevResult: c.PrevResult}
		if err := version.ParsePrevResult(nc); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "nsmount-cni config: prevResult: "+err.Error(), "")
		}
		c.prevResult = nc.PrevResult
	}
	return &c, nil
}

// resolvConfOf turns CNI DNS settings into a resolver configuration, read
// with glibc's rules as if they were a resolv.conf (at most 3 nameservers,
// the search list winning over the domain, options ndots/timeout/attempts/
// rotate). Values that a resolv.conf line could not carry are refused.
func resolvConfOf(d *types.DNS) (*resolver.ResolvConf, error) {
	var b strings.Builder
	for _, ns := range d.Nameservers {
		a, err := netip.ParseAddr(ns)
		if err != nil {
			return nil, fmt.Errorf("nameserver %q: not an IP address", ns)
		}
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	word := func(what, s string) error {
		if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r <= 0x20 || r == 0x7f || r == '#' || r == ';' }) {
			return fmt.Errorf("%s %q: empty, or a space, control or comment character", what, s)
		}
		return nil
	}
	if d.Domain != "" {
		if err := word("domain", d.Domain); err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "domain %s\n", d.Domain)
	}
	for _, list := range []struct {
		key   string
		words []string
	}{{"search", d.Search}, {"options", d.Options}} {
		if len(list.words) == 0 {
			continue
		}
		for _, w := range list.words {
			if err := word(list.key, w); err != nil {
				return nil, err
			}
		}
		fmt.Fprintf(&b, "%s %s\n", list.key, strings.Join(list.words, " "))
	}
	return resolver.ParseResolvConf(strings.NewReader(b.String()))
}

// cniPlugin carries out the CNI commands.
type cniPlugin struct {
	ctx            context.Context
	stdout, stderr io.Writer
}

// cniError turns an nsmount error into a CNI error: code 7 (invalid network
// configuration) for an invalid argument, 100+N for nsmount error class N.
func cniError(err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return err
	}
	msg := oneLine(err.Error())
	switch code := nsmount.ExitCode(err); code {
	case 1:
		return types.NewError(types.ErrInternal, msg, "")
	case 3:
		return types.NewError(types.ErrInvalidNetworkConfig, msg, "")
	default:
		return types.NewError(uint(100+code), msg, "")
	}
}

// openNetNS opens CNI_NETNS; failures are CNI "invalid netns" errors.
func openNetNS(path string) (*nsmount.Target, error) {
	t, err := nsmount.OpenNetNS(path)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, oneLine(err.Error()), "")
	}
	return t, nil
}

// add checks the configured servers from the container's netns, records
// what it found, and passes prevResult on unchanged.
func (p *cniPlugin) add(args *skel.CmdArgs) error {
	conf, err := parseCNIConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.prevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "nsmount-cni is a chained plugin: no prevResult (list it after the plugin that creates the interface)", "")
	}
	result, err := types100.NewResultFromResult(conf.prevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "nsmount-cni: prevResult: "+err.Error(), "")
	}
	t, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer t.Close()
	// The DNS the previous plugins give the container, else the config's.
	dns := conf.dns
	var dnsErr error
	if len(result.DNS.Nameservers) > 0 {
		if rc, err := resolvConfOf(&result.DNS); err != nil {
			dnsErr = fmt.Errorf("prevResult dns: %w", err)
		} else {
			dns = rc
		}
	}
	checks := nsmount.CheckServers(p.ctx, t, conf.servers, dns, conf.timeout)
	for i := range checks {
		c := &checks[i]
		if c.Reachable {
			continue
		}
		err := c.Err()
		if dnsErr != nil && c.Resolution == nil {
			err = fmt.Errorf("%w (%v)", err, dnsErr)
		}
		if conf.Required {
			return cniError(fmt.Errorf("required %w", err))
		}
		fmt.Fprintf(p.stderr, "nsmount-cni: warning: %s (recorded as unreachable)\n", oneLine(err.Error()))
	}
	rec := &nsmount.CNIRecord{
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		Network:     conf.Name,
		NetNSPath:   args.Netns,
		NetNS:       t.NetNSInode(),
		Time:        time.Now().UTC(),
		Servers:     checks,
	}
	if err := nsmount.WriteCNIRecord(conf.StateDir, rec); err != nil {
		return types.NewError(types.ErrIOFailure, oneLine(err.Error()), "")
	}
	out, err := conf.prevResult.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "nsmount-cni: prevResult: "+err.Error(), "")
	}
	return out.PrintTo(p.stdout)
}

// check verifies that the recorded netns is still there and that every
// server still routes as recorded at ADD.
func (p *cniPlugin) check(args *skel.CmdArgs) error {
	conf, err := parseCNIConfig(args.StdinData)
	if err != nil {
		return err
	}
	rec, err := nsmount.ReadCNIRecord(conf.StateDir, args.ContainerID, args.IfName)
	if err != nil {
		return cniError(err)
	}
	var recorded []string
	for _, c := range rec.Servers {
		recorded = append(recorded, c.Server)
	}
	var configured []string
	for _, s := range conf.servers {
		configured = append(configured, s.String())
	}
	if strings.Join(recorded, ",") != strings.Join(configured, ",") {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("nsmount-cni: servers changed since ADD: recorded %s, configured %s", strings.Join(recorded, ","), strings.Join(configured, ",")), "")
	}
	t, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer t.Close()
	if ino := t.NetNSInode(); ino != rec.NetNS {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("nsmount-cni: %s is not the netns recorded at ADD (inode %d, recorded %d)", args.Netns, ino, rec.NetNS), "")
	}
	drift, err := nsmount.RouteDrift(t, rec.Servers)
	if err != nil {
		return cniError(fmt.Errorf("check routes in %s: %w", t, err))
	}
	if len(drift) > 0 {
		return types.NewError(100+uint(nsmount.ExitCode(nsmount.ErrUnreachable)), fmt.Sprintf("nsmount-cni: routes changed since ADD in %s: %s", t, strings.Join(drift, "; ")), "")
	}
	return nil
}

// del forgets the attachment. It succeeds with an empty CNI_NETNS, a netns
// that is gone, and when called again. A configuration that does not parse
// does not fail DEL (that would stop the runtime from running the DEL of
// the plugins before this one, leaking their interfaces and addresses): it
// is reported on stderr and only its stateDir is used, if it has a usable
// one.
func (p *cniPlugin) del(args *skel.CmdArgs) error {
	stateDir := defaultCNIStateDir
	conf, err := parseCNIConfig(args.StdinData)
	if err == nil {
		stateDir = conf.StateDir
	} else {
		var loose struct {
			StateDir string `json:"stateDir"`
		}
		if json.Unmarshal(args.StdinData, &loose) == nil && filepath.IsAbs(loose.StateDir) && filepath.Clean(loose.StateDir) == loose.StateDir && loose.StateDir != "/" {
			stateDir = loose.StateDir
		}
		fmt.Fprintf(p.stderr, "nsmount-cni: warning: DEL with a bad configuration, using stateDir %s: %s\n", stateDir, oneLine(err.Error()))
	}
	warn := func(msg string) { fmt.Fprintf(p.stderr, "nsmount-cni: %s\n", oneLine(msg)) }
	if err := flushContainer(p.ctx, stateDir, args.ContainerID, args.IfName, args.Netns, warn); err != nil {
		return cniError(err)
	}
	return nil
}

// flushContainer forgets the attachment (containerID, ifName). When its
// network namespace still exists, the stale NFS client state of that
// namespace is flushed first (copies of superblocks that no nsmount mount
// uses are unmounted; processes holding them are named, never killed);
// what cannot be flushed is reported as a warning and does not fail DEL, so
// that a runtime's teardown is never stuck on a process it does not own.
// The registry is reconciled (entries of vanished mounts forgotten) and the
// record removed last, so that a failed DEL is retried. An empty netnsPath,
// or one that no longer is a network namespace, means the namespace is gone.
//
// containerID is CNI_CONTAINERID, not a containerd container ID.
//
// When the namespace is gone, what can be left of its NFS client state is
// orphan superblocks: copies of its mounts in other mount namespaces keep
// them (and the dead namespace's nfs_client) alive. Those of the servers
// recorded at ADD are flushed.
func flushContainer(ctx context.Context, stateDir, containerID, ifName, netnsPath string, warn func(string)) error {
	reg, err := cachectl.Open(stateDir, cachectl.WithReporter(warn))
	if err != nil {
		return fmt.Errorf("flush container %s: %w", containerID, err)
	}
	mgr := &cachectl.Manager{Registry: reg, Report: warn}
	gone := true
	if netnsPath != "" {
		t, err := nsmount.OpenNetNS(netnsPath)
		switch {
		case errors.Is(err, nsmount.ErrTargetNotFound), errors.Is(err, nsmount.ErrInvalidArgument):
			// Gone (or only the empty mount point of a bind mount is left).
		case err != nil:
			return fmt.Errorf("flush container %s: %w", containerID, err)
		default:
			gone = false
			id, _ := cachectl.NSOfPath(netnsPath)
			t.Close()
			rep, err := mgr.Flush(ctx, cachectl.FlushOptions{NetNS: &id})
			if err != nil {
				warn(fmt.Sprintf("flush NFS state of netns %s: %v", netnsPath, err))
			} else if len(rep.Remaining) > 0 {
				warn(fmt.Sprintf("%d stale NFS superblock(s) remain in netns %s: %s", len(rep.Remaining), netnsPath, rep.Remaining[0].Why))
			}
		}
	}
	if gone {
		flushOrphans(ctx, mgr, stateDir, containerID, ifName, warn)
	}
	if _, err := mgr.Reconcile(); err != nil {
		warn(fmt.Sprintf("reconcile registry: %v", err))
	}
	return nsmount.RemoveCNIRecord(stateDir, containerID, ifName)
}

// flushOrphans flushes the orphan superblocks of the servers recorded at ADD
// for (containerID, ifName); without a record (DEL twice, or ADD never
// recorded) there is nothing to attribute to this container.
func flushOrphans(ctx context.Context, mgr *cachectl.Manager, stateDir, containerID, ifName string, warn func(string)) {
	rec, err := nsmount.ReadCNIRecord(stateDir, containerID, ifName)
	if err != nil {
		if !errors.Is(err, nsmount.ErrTargetNotFound) {
			warn(fmt.Sprintf("read record: %v", err))
		}
		return
	}
	none := cachectl.NSID{}
	seen := map[netip.Addr]bool{}
	for _, sc := range rec.Servers {
		addr := sc.Address.Unmap()
		if !addr.IsValid() || seen[addr] {
			continue
		}
		seen[addr] = true
		rep, err := mgr.Flush(ctx, cachectl.FlushOptions{NetNS: &none, Orphans: true, Server: addr})
		if err != nil {
			warn(fmt.Sprintf("flush orphan NFS state of server %s: %v", addr, err))
		} else if len(rep.Remaining) > 0 {
			warn(fmt.Sprintf("%d orphan NFS superblock(s) of server %s remain: %s", len(rep.Remaining), addr, rep.Remaining[0].Why))
		}
	}
}
