package admission

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/internal/jsonkeys"
)

// DefaultPolicyPath is where the host's mount policy is read from by default.
const DefaultPolicyPath = "/etc/nsmount/policy.json"

// maxPolicySize bounds a policy file.
const maxPolicySize = 1 << 20

// A Policy decides which mounts a container may ask for in its annotation.
// It denies by default: a mount is allowed only by a rule that allows its
// server, export, target and every option. It is loaded from a JSON file
// written by the host's administrator:
//
//	{
//	  "version": 1,
//	  "enforce_options": ["noexec"],
//	  "allow": [
//	    {
//	      "name": "team-a",
//	      "servers": ["nfs.example.test", "*.storage.example.test", "198.51.100.10"],
//	      "networks": ["198.51.100.0/24", "2001:db8:a::/48"],
//	      "exports": ["/export/team-a", "/export/team-a/*"],
//	      "targets": ["/data", "/mnt/*"],
//	      "options": ["vers", "nolock", "hard", "timeo", "noatime"],
//	      "enforce_options": ["ro"]
//	    }
//	  ]
//	}
//
// Rules are tried in order; the first that allows the request decides.
//
//   - servers: names as written in the annotation (case-insensitive), exact
//     or "*.suffix" (any name ending in .suffix), IP literals, or "*" (any).
//   - networks (required, at least one): CIDRs that the server's address must
//     be in. A container controls its own DNS and /etc/hosts, so an allowed
//     name may resolve anywhere: the address the mount would connect to is
//     checked after resolution (Admission.Allows), before the mount and
//     again whenever the mount is redone (remount, watch), and a rule
//     without networks is refused when the policy is loaded.
//   - exports and targets: exact clean absolute paths, or "/a/*" for any
//     path strictly below /a ("/*": any path but "/"). A target is checked
//     as written; symlinks in the container's files are then resolved inside
//     the container's root, so a mount can land elsewhere in the container
//     but never outside it.
//   - options: the option keys a request may give ("vers" allows vers=4.2).
//     Options that only restrict (ro, nosuid, nodev, noexec) are always
//     allowed.
//   - csi: the rule also admits CSI volumes (package csi, driver
//     nfs.nsmount.io), for pods in the namespaces it lists; see CheckCSI.
//     A rule with csi may leave out targets: it then admits CSI volumes
//     only. A rule without csi never admits a CSI volume.
//   - enforce_options (top level: every rule; per rule: added to it):
//     options added to every mount the rule allows. nosuid and nodev are
//     always enforced. A request that asks for the opposite of an enforced
//     option (suid, dev, exec for noexec, rw for ro, a different vers= for
//     vers=4.2) is refused, never silently corrected.
//
// The address check covers the server nsmount connects to. An NFSv4 server
// can refer the client to other servers (referrals); the kernel follows
// those on its own, so allow only servers you trust with your networks.
type Policy struct {
	source  string
	digest  string // "sha256:HEX" of the policy's bytes
	rules   []policyRule
	missing bool // LoadOrDeny found no file: every mount is denied
}

type policyRule struct {
	index    int
	name     string
	servers  []string // lowercase, no trailing dot; "*", "*.suffix", name or IP literal
	networks []netip.Prefix
	exports  []string
	targets  []string
	options  map[string]bool
	enforce  nsmount.Options
	csi      *csiRule // nil: no CSI volumes
}

// policyFile is the JSON form of a policy.
type policyFile struct {
	Version        int        `json:"version"`
	EnforceOptions []string   `json:"enforce_options"`
	Allow          []ruleFile `json:"allow"`
}

type ruleFile struct {
	Name           string   `json:"name"`
	Servers        []string `json:"servers"`
	Networks       []string `json:"networks"`
	Exports        []string `json:"exports"`
	Targets        []string `json:"targets"`
	Options        []string `json:"options"`
	EnforceOptions []string `json:"enforce_options"`
	CSI            *csiFile `json:"csi"`
}

// policyKeys are the keys of a policy file and its rules, as written.
var policyKeys = map[string]bool{
	"version": true, "enforce_options": true, "allow": true,
	"name": true, "servers": true, "networks": true, "exports": true, "targets": true, "options": true,
	"csi": true, "namespaces": true, "ephemeral": true,
}

// alwaysEnforced are enforced by every policy.
var alwaysEnforced = nsmount.Options{{Key: "nosuid"}, {Key: "nodev"}}

// restrictive options only take rights away; a request may always give them.
var restrictive = map[string]bool{"ro": true, "nosuid": true, "nodev": true, "noexec": true}

// LoadPolicy reads and checks the policy file at path. The file must be a
// regular file of at most 1 MiB, not writable by group or others, owned by
// root or the caller. Any error in it (unknown keys, a rule without
// networks, a pattern that is not clean, an option that can never be
// allowed) is an nsmount.ErrInvalidArgument naming the place, e.g.
// `policy /etc/nsmount/policy.json: allow[0].networks[1] "10.0.0.1/8": ...`.
func LoadPolicy(path string) (*Policy, error) {
	p, _, err := ReadPolicy(path)
	return p, err
}

// ReadPolicy loads the policy file at path as LoadPolicy does, and also
// returns the file's bytes (the policy's digest is theirs), for a copy of
// exactly what was checked.
func ReadPolicy(path string) (*Policy, []byte, error) {
	// O_NONBLOCK: a FIFO in its place must not hang the caller.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, nil, fmt.Errorf("policy: stat %s: %w", path, err)
	}
	bad := func(format string, args ...any) (*Policy, []byte, error) {
		return nil, nil, nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("policy %s: "+format, append([]any{path}, args...)...))
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return bad("not a regular file")
	case st.Mode&0o022 != 0:
		return bad("writable by group or others (mode %04o)", st.Mode&0o7777)
	case st.Uid != 0 && int(st.Uid) != os.Geteuid():
		return bad("owned by uid %d, not by root", st.Uid)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxPolicySize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("policy: read %s: %w", path, err)
	}
	if len(data) > maxPolicySize {
		return bad("larger than %d bytes", maxPolicySize)
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return bad("%w", err)
	}
	p.source = path
	return p, data, nil
}

// LoadOrDeny loads the policy file at path as LoadPolicy does, with the
// host's default for a missing file: a policy that denies every mount
// ("denied: policy PATH does not exist (deny by default)"), so that a host
// without a policy mounts nothing for its containers. A file that exists
// but cannot be read, or does not parse, is an error: a broken policy is
// never taken for no policy.
func LoadOrDeny(path string) (*Policy, error) {
	p, err := LoadPolicy(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Policy{source: path, missing: true}, nil
	}
	return p, err
}

// ParsePolicy parses a policy from its JSON text (see Policy): keys are
// spelt exactly and given once. Errors are nsmount.ErrInvalidArgument.
func ParsePolicy(data []byte) (*Policy, error) {
	bad := func(err error) (*Policy, error) { return nil, nsmount.WithClass(nsmount.ErrInvalidArgument, err) }
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var pf policyFile
	if err := dec.Decode(&pf); err != nil {
		return bad(fmt.Errorf("invalid JSON: %s", oneLineError(err)))
	}
	if _, err := dec.Token(); err != io.EOF {
		return bad(errors.New("unexpected data after the policy object"))
	}
	// The decoder took keys in any case, and the last of a repeated key.
	if err := jsonkeys.Check(data, policyKeys, true); err != nil {
		return bad(fmt.Errorf("invalid JSON: %w", err))
	}
	if pf.Version != 1 {
		return bad(fmt.Errorf("version %d: want 1", pf.Version))
	}
	global, err := parseEnforced("enforce_options", pf.EnforceOptions)
	if err != nil {
		return bad(err)
	}
	sum := sha256.Sum256(data)
	p := &Policy{source: "(inline)", digest: "sha256:" + hex.EncodeToString(sum[:])}
	for i, rf := range pf.Allow {
		r, err := compileRule(i, rf, global)
		if err != nil {
			return bad(err)
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

func oneLineError(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// parseEnforced parses a list of enforced options ("ro", "vers=4.2").
func parseEnforced(where string, list []string) (nsmount.Options, error) {
	var out nsmount.Options
	for i, s := range list {
		opts, err := nsmount.ParseOptions(s)
		if err != nil || len(opts) != 1 {
			return nil, fmt.Errorf("%s[%d] %q: want one option, KEY or KEY=VALUE", where, i, s)
		}
		o := opts[0]
		if _, ok := nsmount.ReservedOption(o.Key); ok {
			return nil, fmt.Errorf("%s[%d] %q: chosen by nsmount, cannot be enforced", where, i, s)
		}
		for _, e := range append(slices.Clone(alwaysEnforced), out...) {
			if optionsConflict(o, e) {
				return nil, fmt.Errorf("%s[%d] %q: conflicts with enforced %q", where, i, s, e)
			}
		}
		out = append(out, o)
	}
	return out, nil
}

func compileRule(i int, rf ruleFile, global nsmount.Options) (policyRule, error) {
	where := fmt.Sprintf("allow[%d]", i)
	r := policyRule{index: i, name: rf.Name, options: map[string]bool{}}
	bad := func(field string, j int, val string, format string, args ...any) (policyRule, error) {
		return r, fmt.Errorf("%s.%s[%d] %q: %s", where, field, j, val, fmt.Sprintf(format, args...))
	}
	for _, f := range []struct {
		name string
		list []string
	}{{"servers", rf.Servers}, {"networks", rf.Networks}, {"exports", rf.Exports}, {"targets", rf.Targets}} {
		if len(f.list) == 0 && f.name == "targets" && rf.CSI != nil {
			continue // a rule for CSI volumes only
		}
		if len(f.list) == 0 {
			why := "at least one is needed"
			if f.name == "networks" {
				why = "at least one is needed: a container resolves names itself, so only the address it connects to can be checked"
			}
			return r, fmt.Errorf("%s.%s: missing or empty (%s)", where, f.name, why)
		}
	}
	for j, s := range rf.Servers {
		pat := strings.TrimSuffix(strings.ToLower(s), ".")
		switch {
		case pat == "*":
		case strings.HasPrefix(pat, "*."):
			if !nsmount.ValidHostname(pat[2:]) {
				return bad("servers", j, s, "want a host name, *.SUFFIX, an IP address or *")
			}
		default:
			if a, err := netip.ParseAddr(pat); err == nil {
				pat = a.Unmap().String()
			} else if !nsmount.ValidHostname(pat) {
				return bad("servers", j, s, "want a host name, *.SUFFIX, an IP address or *")
			}
		}
		r.servers = append(r.servers, pat)
	}
	for j, s := range rf.Networks {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return bad("networks", j, s, "want a CIDR such as 198.51.100.0/24")
		}
		if pfx != pfx.Masked() {
			return bad("networks", j, s, "host bits set (did you mean %s?)", pfx.Masked())
		}
		r.networks = append(r.networks, pfx)
	}
	for _, f := range []struct {
		name string
		list []string
		out  *[]string
	}{{"exports", rf.Exports, &r.exports}, {"targets", rf.Targets, &r.targets}} {
		for j, s := range f.list {
			if !validPathPattern(s) {
				return bad(f.name, j, s, "want a clean absolute path, or PATH/* for any path below it")
			}
			if f.name == "targets" && s == "/" {
				return bad(f.name, j, s, "the container's root can never be a mount target")
			}
			*f.out = append(*f.out, s)
		}
	}
	enforce, err := parseEnforced(where+".enforce_options", rf.EnforceOptions)
	if err != nil {
		return r, err
	}
	for j, e := range enforce {
		for _, g := range global {
			if optionsConflict(e, g) {
				return r, fmt.Errorf("%s.enforce_options[%d] %q: conflicts with enforced %q", where, j, e, g)
			}
		}
	}
	for _, e := range slices.Concat(alwaysEnforced, global, enforce) {
		if !slices.Contains(r.enforce, e) {
			r.enforce = append(r.enforce, e)
		}
	}
	for j, s := range rf.Options {
		opts, err := nsmount.ParseOptions(s)
		if err != nil || len(opts) != 1 || opts[0].HasValue {
			return bad("options", j, s, "want an option name such as vers or nolock")
		}
		if _, ok := nsmount.ReservedOption(s); ok {
			return bad("options", j, s, "chosen by nsmount, never allowed")
		}
		for _, e := range r.enforce {
			// The same key is fine (vers with vers=4.2 enforced: a request
			// may repeat the enforced value); its opposite never is.
			if canonicalKey(s) != canonicalKey(e.Key) && optionsConflict(opts[0], e) {
				return bad("options", j, s, "can never be allowed: %s is enforced", e)
			}
		}
		r.options[s] = true
	}
	if rf.CSI != nil {
		if r.csi, err = compileCSI(where+".csi", rf.CSI); err != nil {
			return r, err
		}
	}
	return r, nil
}

// Check decides whether the policy allows v, before anything is resolved.
// Allowed, it returns the request to mount (v's options with the enforced
// ones added) and the Admission: the rule's decision as data, to be checked
// against the address the server resolves to from the container (before
// the mount, and again at every later decision about it: remount, watch)
// and recorded with the mount. Refused, the error is nsmount.ErrDenied with
// the reason given by the rule that matched the request furthest.
func (p *Policy) Check(v VolumeRequest) (nsmount.Request, *Admission, error) {
	if p.missing {
		return nsmount.Request{}, nil, nsmount.WithClass(nsmount.ErrDenied, fmt.Errorf("denied: policy %s does not exist (deny by default)", p.source))
	}
	if len(p.rules) == 0 {
		return nsmount.Request{}, nil, p.denied("no rule allows any mount (deny by default)")
	}
	best, bestStage := "", -1
	for i := range p.rules {
		r := &p.rules[i]
		stage, why := r.check(v)
		if why == "" {
			req := r.request(v)
			return req, r.admission(p, v, req), nil
		}
		if stage > bestStage {
			best, bestStage = why, stage
			if stage > 0 {
				best += " (" + r.String() + ")"
			}
		}
	}
	return nsmount.Request{}, nil, p.denied(best)
}

func (p *Policy) denied(why string) error {
	return nsmount.WithClass(nsmount.ErrDenied, fmt.Errorf("denied by policy %s: %s", p.source, why))
}

// String names the rule in messages: `rule 0 "team-a"`.
func (r *policyRule) String() string {
	if r.name == "" {
		return fmt.Sprintf("rule %d", r.index)
	}
	return fmt.Sprintf("rule %d %q", r.index, r.name)
}

// check returns "" when r allows v, else how far v matched (0 server,
// 1 server address, 2 export, 3 target, 4 options) and why not.
func (r *policyRule) check(v VolumeRequest) (int, string) {
	if !r.allowsServer(v.Source.Server) {
		return 0, fmt.Sprintf("server %q is not allowed", v.Source.Server)
	}
	if a, err := netip.ParseAddr(v.Source.Server); err == nil && !r.inNetworks(a) {
		return 1, fmt.Sprintf("server address %s is outside the allowed networks", a)
	}
	if !matchPath(r.exports, v.Source.Export) {
		return 2, fmt.Sprintf("export %q of server %q is not allowed", v.Source.Export, v.Source.Server)
	}
	if len(r.targets) == 0 {
		return 3, fmt.Sprintf("target %q is not allowed: the rule admits CSI volumes only", v.Target)
	}
	if !matchPath(r.targets, v.Target) {
		return 3, fmt.Sprintf("target %q is not allowed", v.Target)
	}
	if why := r.checkOptions(v.Options); why != "" {
		return 4, why
	}
	return 5, ""
}

// checkOptions returns "" when r allows every option of opts, else why not.
func (r *policyRule) checkOptions(opts nsmount.Options) string {
	for _, o := range opts {
		for _, e := range r.enforce {
			if optionsConflict(o, e) {
				return fmt.Sprintf("option %q is not allowed: %s is enforced", o, e)
			}
		}
		if !r.options[o.Key] && !(restrictive[o.Key] && !o.HasValue) && !slices.Contains(r.enforce, o) {
			return fmt.Sprintf("option %q is not allowed", o.Key)
		}
	}
	return ""
}

// request builds the request to mount for v, allowed by r.
func (r *policyRule) request(v VolumeRequest) nsmount.Request {
	req := v.Request()
	req.Options = r.withEnforced(v.Options)
	return req
}

// withEnforced returns opts, allowed by r, with r's enforced options.
func (r *policyRule) withEnforced(opts nsmount.Options) nsmount.Options {
	var out nsmount.Options
	for _, o := range opts {
		if !slices.Contains(r.enforce, o) {
			out = append(out, o)
		}
	}
	// Enforced options last, so that nothing given before can undo them.
	return append(out, r.enforce...)
}

// admission records r's decision for v, mounted as req.
func (r *policyRule) admission(p *Policy, v VolumeRequest, req nsmount.Request) *Admission {
	return &Admission{
		Policy: p.source, Digest: p.digest, Rule: r.String(),
		Server: v.Source.Server, Export: v.Source.Export, Target: v.Target,
		Options:  req.Options.String(),
		Networks: slices.Clone(r.networks),
	}
}

func (r *policyRule) allowsServer(server string) bool {
	s := strings.TrimSuffix(strings.ToLower(server), ".")
	a, err := netip.ParseAddr(s)
	isAddr := err == nil
	if isAddr {
		s = a.Unmap().String()
	}
	for _, pat := range r.servers {
		switch {
		case pat == "*":
			return true
		case strings.HasPrefix(pat, "*."):
			if !isAddr && strings.HasSuffix(s, pat[1:]) {
				return true
			}
		case pat == s:
			return true
		}
	}
	return false
}

func (r *policyRule) inNetworks(a netip.Addr) bool { return inNetworks(r.networks, a) }

// validPathPattern accepts a clean absolute path, "PATH/*" for such a
// PATH, or "/*".
func validPathPattern(s string) bool {
	if s == "/*" {
		return true
	}
	base, _ := strings.CutSuffix(s, "/*")
	return !strings.Contains(base, "*") && CheckPath(base) == nil
}

// matchPath reports whether p (clean, absolute) matches one of patterns:
// an exact path, or "/a/*" for any path strictly below /a.
func matchPath(patterns []string, p string) bool {
	if path.Clean(p) != p {
		return false
	}
	for _, pat := range patterns {
		if base, ok := strings.CutSuffix(pat, "*"); ok {
			if strings.HasPrefix(p, base) && len(p) > len(base) {
				return true
			}
		} else if pat == p {
			return true
		}
	}
	return false
}

// exclusive are groups of options of which at most one may be in effect.
var exclusive = [][]string{
	{"ro", "rw"},
	{"hard", "soft", "softerr"},
	{"sync", "async"},
	{"noatime", "relatime", "strictatime", "atime"},
}

// canonicalKey maps option aliases to one name.
func canonicalKey(k string) string {
	if k == "nfsvers" {
		return "vers"
	}
	return k
}

// optionsConflict reports whether giving o undoes or contradicts the
// enforced option e: the same key with another value, the "no" form of a
// flag ("suid" against "nosuid"), or another member of an exclusive group.
func optionsConflict(o, e nsmount.Option) bool {
	ok, ek := canonicalKey(o.Key), canonicalKey(e.Key)
	if ok == ek {
		if ok == "vers" {
			return nsmount.NormalizeVersion(o.Value) != nsmount.NormalizeVersion(e.Value) || o.HasValue != e.HasValue
		}
		return o.HasValue != e.HasValue || o.Value != e.Value
	}
	if "no"+ok == ek || "no"+ek == ok {
		return true
	}
	for _, g := range exclusive {
		if slices.Contains(g, ok) && slices.Contains(g, ek) {
			return true
		}
	}
	return false
}
