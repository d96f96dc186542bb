package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
	"github.com/nsmount/nsmount/nsmount/internal/jsonkeys"
	"github.com/nsmount/nsmount/routing/resolver"
)

// PluginName is the program name (argv[0] base name) under which nsmount
// runs as a CNI plugin, and the "type" of its network configuration.
const PluginName = "nsmount-cni"

// Versions are the CNI spec versions the plugin speaks: every version with
// chained plugins (prevResult), up to 1.0.0.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0")

// Limits and defaults of the plugin configuration.
const (
	// MaxServers is the most servers one configuration may list.
	MaxServers = 16
	// MaxTimeout bounds the configured timeout.
	MaxTimeout = time.Minute
	// DefaultStateDir holds the records (in DefaultStateDir/cni) and the
	// registry when the configuration names no stateDir.
	DefaultStateDir = "/run/nsmount"
)

// Config is the plugin's network configuration, parsed and checked.
type Config struct {
	// CNIVersion and Name are the network's.
	CNIVersion, Name string
	// Servers are the NFS servers to check.
	Servers []ServerAddr
	// Timeout bounds, per server, the name resolution and, separately,
	// the route lookups and probes.
	Timeout time.Duration
	// StateDir holds the records, in StateDir/cni, and the registry.
	StateDir string
	// Required makes ADD fail when a server is unreachable; otherwise it
	// is recorded as unreachable and ADD succeeds.
	Required bool
	// DNS resolves server names when prevResult has no nameservers; nil
	// without a "dns" setting.
	DNS *resolver.ResolvConf
	// PrevResult is the result of the previous plugins; nil without one.
	PrevResult types.Result
}

// configFile is the JSON form of the configuration; unknown fields are
// refused.
type configFile struct {
	CNIVersion string   `json:"cniVersion"`
	Name       string   `json:"name"`
	Type       string   `json:"type"`
	Servers    []string `json:"servers"`
	Timeout    string   `json:"timeout,omitempty"`
	StateDir   string   `json:"stateDir,omitempty"`
	Required   bool     `json:"required,omitempty"`
	// DNS resolves server names when prevResult has no nameservers.
	DNS        *types.DNS     `json:"dns,omitempty"`
	PrevResult map[string]any `json:"prevResult,omitempty"`
	// RuntimeConfig and Args are CNI conventions that runtimes may add;
	// they are accepted and unused.
	RuntimeConfig json.RawMessage `json:"runtimeConfig,omitempty"`
	Args          json.RawMessage `json:"args,omitempty"`
}

// configKeys are the keys of the configuration, as written.
var configKeys = map[string]bool{
	"cniVersion": true, "name": true, "type": true, "servers": true, "timeout": true, "stateDir": true,
	"required": true, "dns": true, "prevResult": true, "runtimeConfig": true, "args": true,
}

// ParseConfig decodes and checks the plugin configuration (the stdin of a
// CNI call: untrusted until checked). Errors are CNI errors: code 7
// (invalid network configuration), or 6 (decoding failure) for a
// prevResult that does not decode. Top-level keys are spelt exactly, and
// no key is given twice anywhere.
//
//	{"cniVersion": "1.0.0", "name": "net", "type": "nsmount-cni",
//	 "servers": ["nfs.example.test", "198.51.100.10:2049"],
//	 "timeout": "5s", "stateDir": "/run/nsmount", "required": false,
//	 "dns": {"nameservers": ["192.0.2.53"], "search": ["example.test"]}}
func ParseConfig(data []byte) (*Config, error) {
	bad := func(format string, args ...any) (*Config, error) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, report.OneLine(PluginName+" config: "+fmt.Sprintf(format, args...)), "")
	}
	var f configFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return bad("%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return bad("data after the JSON object")
	}
	// The decoder took keys in any case, and the last of a repeated key.
	if err := jsonkeys.Check(data, configKeys, false); err != nil {
		return bad("%v", err)
	}
	c := &Config{CNIVersion: f.CNIVersion, Name: f.Name, Required: f.Required, StateDir: f.StateDir, Timeout: nsmount.DefaultProbeTimeout}
	if len(f.Servers) == 0 {
		return bad(`"servers" is empty: list at least one NFS server, "HOST[:PORT]"`)
	}
	if len(f.Servers) > MaxServers {
		return bad(`%d servers: at most %d`, len(f.Servers), MaxServers)
	}
	seen := map[ServerAddr]bool{}
	for _, s := range f.Servers {
		sa, err := ParseServerAddr(s)
		if err != nil {
			return bad("%v", err)
		}
		if seen[sa] {
			return bad("server %s listed twice", sa)
		}
		seen[sa] = true
		c.Servers = append(c.Servers, sa)
	}
	if f.Timeout != "" {
		d, err := time.ParseDuration(f.Timeout)
		if err != nil || d < time.Millisecond || d > MaxTimeout {
			return bad("timeout %q: want a duration from 1ms to %v, like \"5s\"", f.Timeout, MaxTimeout)
		}
		c.Timeout = d
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if !validStateDir(c.StateDir) {
		return bad("stateDir %q: want a clean absolute path other than /", c.StateDir)
	}
	if f.DNS != nil && !f.DNS.IsEmpty() {
		rc, err := ResolvConfOf(f.DNS)
		if err != nil {
			return bad("dns: %v", err)
		}
		c.DNS = rc
	}
	if f.PrevResult != nil {
		nc := &types.PluginConf{CNIVersion: f.CNIVersion, RawPrevResult: f.PrevResult}
		if err := version.ParsePrevResult(nc); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, report.OneLine(PluginName+" config: prevResult: "+err.Error()), "")
		}
		c.PrevResult = nc.PrevResult
	}
	return c, nil
}

// validStateDir accepts a clean absolute path other than "/".
func validStateDir(p string) bool {
	return filepath.IsAbs(p) && filepath.Clean(p) == p && p != "/"
}

// stateDirOf returns the stateDir of a configuration that does not parse,
// if it names a usable one, else DefaultStateDir: DEL must still find the
// records of an attachment made with it.
func stateDirOf(data []byte) string {
	var loose struct {
		StateDir string `json:"stateDir"`
	}
	if json.Unmarshal(data, &loose) == nil && validStateDir(loose.StateDir) {
		return loose.StateDir
	}
	return DefaultStateDir
}

// ResolvConfOf turns CNI DNS settings into a resolver configuration, read
// with glibc's rules as if they were a resolv.conf (at most 3 nameservers,
// the search list winning over the domain, options ndots/timeout/attempts/
// rotate). Values that a resolv.conf line could not carry are refused.
func ResolvConfOf(d *types.DNS) (*resolver.ResolvConf, error) {
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
