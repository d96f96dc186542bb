package admission

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/nsmount/nsmount/nsmount"
)

// CSIVolume is a CSI volume to publish (package csi parses it from
// kubelet's NodePublishVolume), validated but not yet allowed by any
// policy.
type CSIVolume struct {
	// Source is the server and export.
	Source nsmount.Source
	// FSType is "nfs" or "nfs4".
	FSType string
	// Options are the mount options asked for (the volume's options and
	// the PersistentVolume's mountOptions; ro for a read-only volume).
	Options nsmount.Options
	// Target is kubelet's target path in the host's mount namespace. It is
	// recorded in the admission, never matched against a rule's targets:
	// kubelet chooses it, and where the containers see the volume is the
	// pod's business.
	Target string
	// Namespace is the pod's namespace, as kubelet gives it
	// (csi.storage.k8s.io/pod.namespace).
	Namespace string
	// Ephemeral marks an inline volume, written in the pod itself by the
	// pod's author, rather than a PersistentVolume written by the cluster's
	// administrator.
	Ephemeral bool
}

// String describes the volume for messages: "SERVER:/EXPORT for a pod in
// namespace NS".
func (v CSIVolume) String() string {
	kind := "volume"
	if v.Ephemeral {
		kind = "inline volume"
	}
	return fmt.Sprintf("%s (%s of a pod in namespace %q)", v.Source, kind, v.Namespace)
}

// csiRule is a rule's "csi" part: which pods' CSI volumes it admits.
type csiRule struct {
	namespaces []string // names, or "*"
	ephemeral  bool
}

// csiFile is the JSON form of csiRule:
//
//	"csi": {"namespaces": ["team-a", "team-b"], "ephemeral": true}
type csiFile struct {
	Namespaces []string `json:"namespaces"`
	Ephemeral  bool     `json:"ephemeral"`
}

func compileCSI(where string, f *csiFile) (*csiRule, error) {
	if len(f.Namespaces) == 0 {
		return nil, fmt.Errorf("%s.namespaces: missing or empty (at least one is needed: a namespace name, or * for every namespace)", where)
	}
	c := &csiRule{ephemeral: f.Ephemeral}
	for j, ns := range f.Namespaces {
		if ns != "*" && !ValidNamespace(ns) {
			return nil, fmt.Errorf("%s.namespaces[%d] %q: want a Kubernetes namespace name (lowercase letters, digits and -, at most 63) or *", where, j, ns)
		}
		c.namespaces = append(c.namespaces, ns)
	}
	return c, nil
}

// ValidNamespace reports whether s is a Kubernetes namespace name: an RFC
// 1123 label (lowercase letters, digits and '-', starting and ending with a
// letter or digit, at most 63 characters).
func ValidNamespace(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// CheckCSI decides whether the policy allows CSI volume v, as Check does
// for an annotation's mount, with these differences:
//
//   - only rules with a "csi" part are tried, and the pod's namespace must
//     be one of its namespaces ("*": any); an inline volume (v.Ephemeral)
//     needs "ephemeral": true in it as well, since any pod author may write
//     one, while a PersistentVolume is written by the cluster's
//     administrator;
//   - the rule's targets are not checked: the mount point is kubelet's
//     target path, and the path inside the containers is the pod spec's
//     volumeMount, which the driver never sees.
//
// Servers, networks, exports and options are checked as for Check, and
// the returned Admission (Target: kubelet's path; Namespace: the pod's)
// is checked against the address the server resolves to from the pod
// before the mount and at every later decision about it.
func (p *Policy) CheckCSI(v CSIVolume) (nsmount.Request, *Admission, error) {
	if p.missing {
		return nsmount.Request{}, nil, nsmount.WithClass(nsmount.ErrDenied, fmt.Errorf("denied: policy %s does not exist (deny by default)", p.source))
	}
	if v.Namespace == "" {
		return nsmount.Request{}, nil, nsmount.WithClass(nsmount.ErrDenied, errors.New("denied: a CSI volume without its pod's namespace is never allowed"))
	}
	best, bestStage := "no rule admits CSI volumes (deny by default; a rule needs \"csi\")", -1
	for i := range p.rules {
		r := &p.rules[i]
		if r.csi == nil {
			continue
		}
		stage, why := r.checkCSI(v)
		if why == "" {
			req := nsmount.Request{
				Source: v.Source, FSType: v.FSType, Options: r.withEnforced(v.Options),
				Target: v.Target, ResolveFrom: nsmount.ResolveFromContainer,
			}
			adm := &Admission{
				Policy: p.source, Digest: p.digest, Rule: r.String(),
				Server: v.Source.Server, Export: v.Source.Export, Target: v.Target,
				Options: req.Options.String(), Networks: slices.Clone(r.networks),
				Namespace: v.Namespace,
			}
			return req, adm, nil
		}
		if stage > bestStage {
			best, bestStage = why+" ("+r.String()+")", stage
		}
	}
	return nsmount.Request{}, nil, p.denied(best)
}

// checkCSI returns "" when r allows v, else how far v matched (0 server,
// 1 server address, 2 export, 3 namespace, 4 inline, 5 options) and why
// not.
func (r *policyRule) checkCSI(v CSIVolume) (int, string) {
	if !r.allowsServer(v.Source.Server) {
		return 0, fmt.Sprintf("server %q is not allowed", v.Source.Server)
	}
	if a, err := netip.ParseAddr(v.Source.Server); err == nil && !r.inNetworks(a) {
		return 1, fmt.Sprintf("server address %s is outside the allowed networks", a)
	}
	if !matchPath(r.exports, v.Source.Export) {
		return 2, fmt.Sprintf("export %q of server %q is not allowed", v.Source.Export, v.Source.Server)
	}
	if !slices.Contains(r.csi.namespaces, "*") && !slices.Contains(r.csi.namespaces, v.Namespace) {
		return 3, fmt.Sprintf("CSI volumes of pods in namespace %q are not allowed", v.Namespace)
	}
	if v.Ephemeral && !r.csi.ephemeral {
		return 4, "inline (ephemeral) CSI volumes are not allowed"
	}
	if why := r.checkOptions(v.Options); why != "" {
		return 5, why
	}
	return 6, ""
}
