// Package admission decides which NFS mounts a container may ask for: it
// parses the mounts annotation of a container's spec (untrusted input),
// checks each request (or a CSI volume: CheckCSI) against the host's
// policy, and returns the decision
// as an Admission, a plain value that is recorded with the mount and
// checked again at every later decision about it.
//
// A container controls its own DNS and /etc/hosts: a name allowed today may
// resolve elsewhere tomorrow. So the decision is not only "this request is
// allowed" but "this mount may reach these networks": Admission.Allows is
// asked with the address the server resolves to from the container, before
// the mount is made, and again before it is ever redone (nsmount remount,
// watch after ESTALE, route drift or a dead server). A container that
// points the name elsewhere after the mount cannot move its volume.
package admission

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/nsmount/nsmount/nsmount"
)

// Admission is the host policy's decision for one mount: which rule of
// which policy admitted it, what it admitted, and the networks the server's
// address must stay in for the mount's whole life.
type Admission struct {
	// Policy is the policy file that decided ("(inline)" for a policy
	// parsed from bytes); Digest the SHA-256 of its content then.
	Policy string `json:"policy"`
	Digest string `json:"digest,omitempty"`
	// Rule names the rule that admitted the mount: `rule 0 "team-a"`.
	Rule string `json:"rule"`
	// Server (as the annotation wrote it), Export and Target are what was
	// admitted; Options the options it is mounted with, enforced ones
	// included.
	Server  string `json:"server"`
	Export  string `json:"export"`
	Target  string `json:"target"`
	Options string `json:"options,omitempty"`
	// Networks are the networks the server's address must be in.
	Networks []netip.Prefix `json:"networks"`
	// Namespace is the pod namespace a CSI volume was admitted for (its
	// Target is then kubelet's target path on the host); "" for a mount
	// an annotation asked for.
	Namespace string `json:"namespace,omitempty"`
}

// Allows reports whether a mount under this admission may connect to addr
// (the address its server resolves to from the container now): nil, or an
// error of class nsmount.ErrDenied naming the rule and its networks. A nil
// Admission allows nothing: a mount that needs one and has none recorded
// is never moved.
func (a *Admission) Allows(addr netip.Addr) error {
	if a == nil {
		return nsmount.WithClass(nsmount.ErrDenied, fmt.Errorf("no policy admission is recorded for this mount"))
	}
	if !addr.IsValid() {
		return a.denied(fmt.Sprintf("server %q: no address to check", a.Server))
	}
	if inNetworks(a.Networks, addr) {
		return nil
	}
	return a.denied(fmt.Sprintf("server %q resolved to %s, outside the networks of %s (%s)", a.Server, addr.Unmap(), a.Rule, a.networks()))
}

func (a *Admission) denied(why string) error {
	return nsmount.WithClass(nsmount.ErrDenied, fmt.Errorf("denied by policy %s: %s", a.Policy, why))
}

func (a *Admission) networks() string {
	s := make([]string, len(a.Networks))
	for i, n := range a.Networks {
		s[i] = n.String()
	}
	return strings.Join(s, ", ")
}

// String describes the admission for people: `rule 0 "team-a" of policy
// /etc/nsmount/policy.json (198.51.100.0/24)`.
func (a *Admission) String() string {
	if a == nil {
		return "none"
	}
	return fmt.Sprintf("%s of policy %s (%s)", a.Rule, a.Policy, a.networks())
}

// inNetworks reports whether a is in one of nets. A zoned address (link
// local with an interface) is never: a rule names networks, not links.
func inNetworks(nets []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	if a.Zone() != "" {
		return false
	}
	for _, n := range nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}
