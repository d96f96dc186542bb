package nsmount

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/routing"
	"github.com/nsmount/nsmount/routing/resolver"
)

// OpenNetNS opens the network namespace at path (for example the
// CNI_NETNS of a CNI call, /run/netns/NAME) as a Target that has no mount
// namespace: Do(NetNS, ...) and route checks work on it, mounting does not.
func OpenNetNS(path string) (*Target, error) {
	if path == "" {
		return nil, withClass(ErrInvalidArgument, errors.New("empty network namespace path"))
	}
	f, err := openNS(path, unix.CLONE_NEWNET)
	if err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	return &Target{netns: f, desc: "netns " + path}, nil
}


// ServerAddr is an NFS server to reach: a host name or IP address and the
// TCP port of its NFS service.
type ServerAddr struct {
	// Host is a host name or an IP address (IPv6 without brackets).
	Host string
	// Port is the NFS TCP port.
	Port uint16
}

// String formats the server as HOST:PORT, an IPv6 address in brackets.
func (s ServerAddr) String() string {
	return joinHostPort(s.Host, s.Port)
}

func joinHostPort(host string, port uint16) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(int(port))
}

// ParseServerAddr parses "HOST[:PORT]": a host name, an IPv4 address or an
// IPv6 address (in brackets when a port follows: [2001:db8::1]:2049), and an
// optional port (default DefaultNFSPort).
func ParseServerAddr(s string) (ServerAddr, error) {
	bad := func(why string) (ServerAddr, error) {
		return ServerAddr{}, withClass(ErrInvalidArgument, fmt.Errorf("invalid server %q: %s (want HOST[:PORT])", s, why))
	}
	if s == "" {
		return bad("empty")
	}
	if len(s) > 260 {
		return bad("too long")
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r <= 0x20 || r == 0x7f }) {
		return bad("space or control character")
	}
	// A bare IPv6 address has colons but no port.
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return bad("zoned address")
		}
		return ServerAddr{Host: a.Unmap().String(), Port: DefaultNFSPort}, nil
	}
	host, port := s, DefaultNFSPort
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return bad("unterminated IPv6 literal")
		}
		host, s = s[1:end], s[end+1:]
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() || a.Zone() != "" {
			return bad("not an IPv6 address in brackets")
		}
		if s != "" && !strings.HasPrefix(s, ":") {
			return bad("garbage after IPv6 literal")
		}
		if s != "" {
			p, err := parsePort(s[1:])
			if err != nil {
				return bad(err.Error())
			}
			port = p
		}
		return ServerAddr{Host: host, Port: uint16(port)}, nil
	}
	if h, p, ok := strings.Cut(s, ":"); ok {
		if strings.Contains(p, ":") {
			return bad("IPv6 address with a port must be in brackets")
		}
		n, err := parsePort(p)
		if err != nil {
			return bad(err.Error())
		}
		host, port = h, n
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return ServerAddr{Host: a.Unmap().String(), Port: uint16(port)}, nil
	}
	if !validHostname(host) {
		return bad("neither an IP address nor a host name")
	}
	return ServerAddr{Host: host, Port: uint16(port)}, nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q is not 1-65535", s)
	}
	return int(n), nil
}

// ServerCheck is how a network namespace reaches one NFS server: the
// resolution of its name, the address chosen, its route, and whether the
// NFS port answered.
type ServerCheck struct {
	// Server is the server as given, HOST:PORT.
	Server string `json:"server"`
	// Port is the NFS TCP port probed.
	Port uint16 `json:"port"`
	// Resolution is how the host name was resolved (also for a literal).
	Resolution *resolver.Resolution `json:"resolution,omitempty"`
	// Candidates are the addresses considered, with routes and checks.
	Candidates []routing.Candidate `json:"candidates,omitempty"`
	// Address is the address chosen; for an unreachable server the first
	// one that had a route (or the first one), so that a later check can
	// compare its route.
	Address netip.Addr `json:"address,omitzero"`
	// Route is the route to Address in the namespace (nil: none).
	Route *routing.Route `json:"route,omitempty"`
	// Reachable reports that the NFS port of Address answered.
	Reachable bool `json:"reachable"`
	// Error says why the server is not reachable.
	Error string `json:"error,omitempty"`

	err error // the classed error behind Error, in the process that checked
}

// Err returns why the server is unreachable (nil if it is reachable), with
// its error class, for checks made by this process; for a decoded check, an
// error with the recorded text.
func (c *ServerCheck) Err() error {
	switch {
	case c.Reachable:
		return nil
	case c.err != nil:
		return c.err
	}
	return withClass(ErrUnreachable, errors.New(c.Error))
}

// CheckServers resolves, routes and probes each server from inside t's
// network namespace, concurrently, and returns one check per server in the
// given order. A host name is resolved with conf (DNS only: no hosts file)
// over sockets created inside the namespace, within timeout; conf nil or
// without nameservers fails a name. Then, as Mount would choose, the first
// address with a route whose NFS port accepts a TCP connection is taken,
// the route lookups and probes bounded by timeout together.
func CheckServers(ctx context.Context, t *Target, servers []ServerAddr, conf *resolver.ResolvConf, timeout time.Duration) []ServerCheck {
	timeout = orDefault(timeout, DefaultProbeTimeout)
	out := make([]ServerCheck, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Go(func() { out[i] = checkServer(ctx, t, s, conf, timeout) })
	}
	wg.Wait()
	return out
}

func checkServer(ctx context.Context, t *Target, s ServerAddr, conf *resolver.ResolvConf, timeout time.Duration) ServerCheck {
	c := ServerCheck{Server: s.String(), Port: s.Port}
	fail := func(err error) ServerCheck {
		c.err, c.Error = err, err.Error()
		return c
	}
	inNetNS := func(fn func() error) error { return t.Do(NetNS, fn) }
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(s.Host); err == nil {
		c.Resolution = &resolver.Resolution{Name: s.Host, FQDN: s.Host, Source: resolver.SourceLiteral, Addrs: []netip.Addr{a}}
		addrs = c.Resolution.Addrs
	} else {
		if conf == nil || len(conf.Nameservers) == 0 {
			return fail(withClass(ErrInvalidArgument, fmt.Errorf("server %s: a host name, and no DNS nameserver is known for %s", s, t)))
		}
		rctx, cancel := context.WithTimeout(ctx, timeout)
		r, err := (&resolver.Resolver{Conf: conf, In: inNetNS}).Resolve(rctx, s.Host)
		cancel()
		c.Resolution = r
		if err != nil {
			return fail(withClass(ErrUnreachable, fmt.Errorf("server %s from %s: %w", s, t, err)))
		}
		addrs = r.Addrs
	}
	router, err := routing.NewRouter(inNetNS)
	if err != nil {
		return fail(fmt.Errorf("server %s from %s: %w", s, t, err))
	}
	defer router.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cands, err := router.Choose(cctx, addrs, routing.AnyFamily, routing.Preflight{NFSPort: s.Port, Timeout: timeout})
	c.Candidates = cands
	c.Address = addrs[0]
	for _, cand := range cands {
		if cand.Route != nil {
			c.Address, c.Route = cand.Addr, cand.Route
			break
		}
	}
	if err != nil {
		return fail(withClass(ErrUnreachable, fmt.Errorf("server %s from %s: %w", s, t, err)))
	}
	chosen := cands[len(cands)-1]
	c.Address, c.Route, c.Reachable = chosen.Addr, chosen.Route, true
	return c
}

// RouteDrift looks up again, inside t's network namespace, the route to
// the address of each recorded check, and describes every difference from
// the recorded route (interface, gateway, source, table), or a route that
// appeared or disappeared. Names are not resolved again and nothing is
// probed. No difference gives no lines.
func RouteDrift(t *Target, recorded []ServerCheck) ([]string, error) {
	router, err := routing.NewRouter(func(fn func() error) error { return t.Do(NetNS, fn) })
	if err != nil {
		return nil, err
	}
	defer router.Close()
	var drift []string
	for _, c := range recorded {
		if !c.Address.IsValid() {
			continue
		}
		now, err := router.Lookup(c.Address)
		switch {
		case err != nil && !errors.Is(err, routing.ErrNoRoute):
			return nil, fmt.Errorf("server %s: %w", c.Server, err)
		case err != nil && c.Route != nil:
			drift = append(drift, fmt.Sprintf("server %s: was %s, now %v", c.Server, c.Route, err))
		case err == nil && c.Route == nil:
			drift = append(drift, fmt.Sprintf("server %s: had no route, now %s", c.Server, now))
		case err == nil && (now.Iface != c.Route.Iface || now.Gateway != c.Route.Gateway || now.Source != c.Route.Source || now.Table != c.Route.Table):
			drift = append(drift, fmt.Sprintf("server %s: was %s (table %d), now %s (table %d)", c.Server, c.Route, c.Route.Table, now, now.Table))
		}
	}
	return drift, nil
}

// CNIRecord is what the CNI plugin (nsmount-cni) records at ADD about one
// network attachment: the namespace and how it reaches the configured
// servers. It is kept in a JSON file under StateDir/cni until DEL.
type CNIRecord struct {
	// ContainerID is CNI_CONTAINERID: the runtime's key for the
	// attachment (for a CRI runtime, the pod sandbox ID). It is NOT the
	// containerd container ID of any process in the namespace.
	ContainerID string `json:"cni_container_id"`
	// IfName is CNI_IFNAME, the interface the attachment made.
	IfName string `json:"ifname"`
	// Network is the CNI network name.
	Network string `json:"network"`
	// NetNSPath is CNI_NETNS and NetNS the inode of that namespace.
	NetNSPath string `json:"netns_path"`
	NetNS     uint64 `json:"netns"`
	// Time is when the record was made.
	Time time.Time `json:"time"`
	// Servers are the configured servers as seen from the namespace.
	Servers []ServerCheck `json:"servers"`
}

// maxCNIRecord bounds a record file read back.
const maxCNIRecord = 4 << 20

// CNIRecordPath returns the file of the record for (containerID, ifName)
// under stateDir: stateDir/cni/HASH.json, where HASH is the SHA-256 of both
// (the IDs are never used as file names).
func CNIRecordPath(stateDir, containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return filepath.Join(stateDir, "cni", hex.EncodeToString(sum[:])+".json")
}

// WriteCNIRecord writes rec to its file under stateDir, atomically: a
// temporary file in the same directory, synced, then renamed over the
// record. The directory is created (0700) if missing.
func WriteCNIRecord(stateDir string, rec *CNIRecord) (retErr error) {
	path := CNIRecordPath(stateDir, rec.ContainerID, rec.IfName)
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	defer func() {
		if retErr != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

// ReadCNIRecord reads the record of (containerID, ifName). Without one the
// error wraps os.ErrNotExist and ErrTargetNotFound. A file that does not
// decode, or that names another attachment, is an error.
func ReadCNIRecord(stateDir, containerID, ifName string) (*CNIRecord, error) {
	path := CNIRecordPath(stateDir, containerID, ifName)
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, withClass(ErrTargetNotFound, fmt.Errorf("no record of container %s interface %s: %w", containerID, ifName, err))
		}
		return nil, fmt.Errorf("read record: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCNIRecord+1))
	if err != nil {
		return nil, fmt.Errorf("read record: %w", err)
	}
	if len(data) > maxCNIRecord {
		return nil, fmt.Errorf("read record %s: larger than %d bytes", path, maxCNIRecord)
	}
	var rec CNIRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("read record %s: %w", path, err)
	}
	if rec.ContainerID != containerID || rec.IfName != ifName {
		return nil, fmt.Errorf("read record %s: it is for container %q interface %q", path, rec.ContainerID, rec.IfName)
	}
	return &rec, nil
}

// RemoveCNIRecord removes the record of (containerID, ifName). A missing
// record is not an error.
func RemoveCNIRecord(stateDir, containerID, ifName string) error {
	err := os.Remove(CNIRecordPath(stateDir, containerID, ifName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove record: %w", err)
	}
	return nil
}
