// Package cni is nsmount's CNI chained plugin (nsmount-cni): at ADD it
// checks, from the container's network namespace, how each configured NFS
// server is reached (name, address, route, NFS port) and records it; CHECK
// compares the routes with that record; DEL hands the attachment's cleanup
// to the Manager's one teardown (cachectl.Manager.Teardown) and forgets the
// record. The plugin's input (the network configuration and its
// prevResult, the record) is parsed here; the CNI skeleton (environment,
// exit codes) is the command's.
package cni

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
)

// Result is what a CNI command did, for the caller to print. Errors are
// returned apart, as *types.Error.
type Result struct {
	// Result is ADD's result, to print on stdout: prevResult unchanged,
	// in the configuration's CNI version.
	Result types.Result
	// Record is the attachment's record (ADD: written; CHECK: compared
	// with).
	Record *Record
	// Teardown is what DEL cleaned up through the Manager.
	Teardown *cachectl.TeardownReport
	// Events are one line each for stderr: warnings ("warning: ...") and
	// what DEL flushed.
	Events []string
}

// Error turns an error into a CNI error: a CNI error stays as it is; an
// nsmount error of class N gets code 100+N, but invalid argument (class 3)
// gets code 7 (invalid network configuration); an error without a class
// is code 999 (internal).
func Error(err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return err
	}
	msg := report.OneLine(err.Error())
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
		return nil, types.NewError(types.ErrInvalidNetNS, report.OneLine(err.Error()), "")
	}
	return t, nil
}

// Add checks the configured servers from the container's network
// namespace, records what it found, and passes prevResult on unchanged.
// An unreachable server fails ADD only with "required"; otherwise it is
// recorded as unreachable, with a warning.
func Add(ctx context.Context, args *skel.CmdArgs) (*Result, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	if conf.PrevResult == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, PluginName+" is a chained plugin: no prevResult (list it after the plugin that creates the interface)", "")
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, report.OneLine(PluginName+": prevResult: "+err.Error()), "")
	}
	t, err := openNetNS(args.Netns)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	// The DNS the previous plugins give the container, else the config's.
	dns := conf.DNS
	var dnsErr error
	if len(prev.DNS.Nameservers) > 0 {
		if rc, err := ResolvConfOf(&prev.DNS); err != nil {
			dnsErr = fmt.Errorf("prevResult dns: %w", err)
		} else {
			dns = rc
		}
	}
	res := &Result{}
	checks := CheckServers(ctx, t, conf.Servers, dns, conf.Timeout)
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
			return nil, Error(fmt.Errorf("required %w", err))
		}
		res.Events = append(res.Events, report.Warning(err.Error()+" (recorded as unreachable)"))
	}
	res.Record = &Record{
		ContainerID: args.ContainerID,
		IfName:      args.IfName,
		Network:     conf.Name,
		NetNSPath:   args.Netns,
		NetNS:       t.NetNSInode(),
		Time:        time.Now().UTC(),
		Servers:     checks,
	}
	if err := WriteRecord(conf.StateDir, res.Record); err != nil {
		return nil, types.NewError(types.ErrIOFailure, report.OneLine(err.Error()), "")
	}
	if res.Result, err = conf.PrevResult.GetAsVersion(conf.CNIVersion); err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, report.OneLine(PluginName+": prevResult: "+err.Error()), "")
	}
	return res, nil
}

// Check verifies that the recorded network namespace is still there and
// that every server still routes as recorded at ADD: a route that changed
// is an error of code 106 (unreachable) naming the old and the new route.
func Check(_ context.Context, args *skel.CmdArgs) (*Result, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	rec, err := ReadRecord(conf.StateDir, args.ContainerID, args.IfName)
	if err != nil {
		return nil, Error(err)
	}
	var recorded, configured []string
	for _, c := range rec.Servers {
		recorded = append(recorded, c.Server)
	}
	for _, s := range conf.Servers {
		configured = append(configured, s.String())
	}
	if strings.Join(recorded, ",") != strings.Join(configured, ",") {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("%s: servers changed since ADD: recorded %s, configured %s", PluginName, strings.Join(recorded, ","), strings.Join(configured, ",")), "")
	}
	t, err := openNetNS(args.Netns)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if ino := t.NetNSInode(); ino != rec.NetNS {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("%s: %s is not the netns recorded at ADD (inode %d, recorded %d)", PluginName, args.Netns, ino, rec.NetNS), "")
	}
	drift, err := RouteDrift(t, rec.Servers)
	if err != nil {
		return nil, Error(fmt.Errorf("check routes in %s: %w", t, err))
	}
	if len(drift) > 0 {
		return nil, types.NewError(100+uint(nsmount.ExitCode(nsmount.ErrUnreachable)), report.OneLine(fmt.Sprintf("%s: routes changed since ADD in %s: %s", PluginName, t, strings.Join(drift, "; "))), "")
	}
	return &Result{Record: rec}, nil
}

// Del forgets the attachment (CNI_CONTAINERID, CNI_IFNAME) and cleans up
// after it through the Manager's one teardown: when its network namespace
// still exists, the mounts made from it and its stale NFS client state
// (Teardown with the namespace); when it is gone (an empty CNI_NETNS, or
// a path that no longer is a network namespace), the orphan superblocks of
// the servers recorded at ADD, which copies of its mounts elsewhere keep
// alive. What cannot be cleaned up is a warning and does not fail DEL, so
// that a runtime's teardown is never stuck on a process it does not own;
// the record is removed last, so that a DEL that fails is retried. DEL
// succeeds when called again.
//
// A configuration that does not parse does not fail DEL either (that
// would stop the runtime from running the DEL of the plugins before this
// one, leaking their interfaces and addresses): it is a warning, and only
// its stateDir is used, if it has a usable one.
func Del(ctx context.Context, args *skel.CmdArgs) (*Result, error) {
	res := &Result{}
	stateDir := DefaultStateDir
	if conf, err := ParseConfig(args.StdinData); err == nil {
		stateDir = conf.StateDir
	} else {
		stateDir = stateDirOf(args.StdinData)
		res.Events = append(res.Events, report.Warning(fmt.Sprintf("DEL with a bad configuration, using stateDir %s: %s", stateDir, err)))
	}
	req := cachectl.TeardownRequest{}
	gone := true
	if args.Netns != "" {
		t, err := nsmount.OpenNetNS(args.Netns)
		switch {
		case errors.Is(err, nsmount.ErrTargetNotFound), errors.Is(err, nsmount.ErrInvalidArgument):
			// Gone (or only the empty mount point of a bind mount is left).
		case err != nil:
			return res, Error(fmt.Errorf("tear down container %s: %w", args.ContainerID, err))
		default:
			gone = false
			id := t.NetNS()
			t.Close()
			req.NetNS = &id
		}
	}
	if gone {
		rec, err := ReadRecord(stateDir, args.ContainerID, args.IfName)
		switch {
		case err == nil:
			req.OrphanServers = recordedAddrs(rec)
		case !errors.Is(err, nsmount.ErrTargetNotFound):
			// Without a record (DEL twice, or ADD never recorded) there
			// is nothing to attribute to this container.
			res.Events = append(res.Events, report.Warning(err.Error()))
		}
	}
	mgr, err := cachectl.Open(cachectl.Config{StateDir: stateDir})
	if err != nil {
		return res, Error(fmt.Errorf("tear down container %s: %w", args.ContainerID, err))
	}
	res.Teardown, err = mgr.Teardown(ctx, req)
	res.Events = append(res.Events, report.Notices(mgr)...)
	if err != nil {
		res.Events = append(res.Events, report.Warning(fmt.Sprintf("tear down container %s: %v", args.ContainerID, err)))
	}
	res.Events = append(res.Events, report.Teardown(res.Teardown)...)
	if err := RemoveRecord(stateDir, args.ContainerID, args.IfName); err != nil {
		return res, Error(err)
	}
	return res, nil
}

// recordedAddrs returns the distinct addresses of a record's servers.
func recordedAddrs(rec *Record) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, sc := range rec.Servers {
		a := sc.Address.Unmap()
		if a.IsValid() && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}
