package deploy

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	psapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// The agent's pod is privileged on purpose, and Pod Security Admission's
// baseline level forbids exactly what it needs:
//
//   - privileged: setns into other containers' mount namespaces and mounting
//     there need CAP_SYS_ADMIN over the host's namespaces, and kubelet allows
//     Bidirectional mount propagation (the CSI targets) only to privileged
//     containers;
//   - hostNamespaces (hostPID): the agent finds a container's namespaces
//     through /proc/PID of the runtime's PIDs;
//   - hostPathVolumes: the NRI socket, the registry and the hook binary and
//     policy shared with runc's hooks on the host, kubelet's pods and plugin
//     directories, /dev/kmsg.
//
// restricted forbids all that and more (root, seccomp, capabilities). So the
// namespace must be labelled privileged, and the test holds the pod to
// failing no other baseline check: a new one failing means the pod asks for
// something new (host ports, host network, added capabilities...).
var wantBaselineFailures = []policy.CheckID{"hostNamespaces", "hostPathVolumes", "privileged"}

// podOf is what Pod Security Admission sees of the DaemonSet's pods.
func podOf(o *objects) (*metav1.ObjectMeta, *corev1.PodSpec) {
	tpl := o.daemonSet.Spec.Template
	return &tpl.ObjectMeta, &tpl.Spec
}

// failingChecks runs each default check of a level on its own, so that the
// failures have their check IDs (the evaluator's results do not).
func failingChecks(t *testing.T, level psapi.Level, meta *metav1.ObjectMeta, spec *corev1.PodSpec) []policy.CheckID {
	t.Helper()
	var out []policy.CheckID
	for _, c := range policy.DefaultChecks() {
		if level == psapi.LevelBaseline && c.Level != psapi.LevelBaseline {
			continue
		}
		e, err := policy.NewEvaluator([]policy.Check{c}, nil)
		if err != nil {
			t.Fatal(err)
		}
		res := policy.AggregateCheckResults(e.EvaluatePod(psapi.LevelVersion{Level: level, Version: psapi.LatestVersion()}, meta, spec))
		if !res.Allowed {
			out = append(out, c.ID)
		}
	}
	slices.Sort(out)
	return out
}

// TestPodSecurity evaluates the pod template: allowed at privileged, refused
// at baseline and restricted, for exactly the reasons above; with the
// namespace's own labels it is admitted even where the cluster's default
// level is baseline, and without them it is not.
func TestPodSecurity(t *testing.T) {
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	evaluate := func(level psapi.Level, meta *metav1.ObjectMeta, spec *corev1.PodSpec) policy.AggregateCheckResult {
		return policy.AggregateCheckResults(evaluator.EvaluatePod(psapi.LevelVersion{Level: level, Version: psapi.LatestVersion()}, meta, spec))
	}
	for _, tc := range []struct {
		name string
		sets []string
	}{
		{"defaults", nil},
		{"csi off", []string{"set:csi.enabled=false"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, o := mustDecode(t, values(t, "", append(tc.sets, "set:namespace.create=true")...), defaultRelease)
			meta, spec := podOf(o)

			if r := evaluate(psapi.LevelPrivileged, meta, spec); !r.Allowed {
				t.Errorf("refused at privileged: %s", r.ForbiddenDetail())
			}
			r := evaluate(psapi.LevelBaseline, meta, spec)
			if r.Allowed {
				t.Errorf("allowed at baseline: the pod is not as privileged as the agent needs")
			}
			t.Logf("baseline: %s", r.ForbiddenDetail())
			equal(t, "baseline checks failed", failingChecks(t, psapi.LevelBaseline, meta, spec), wantBaselineFailures)
			r = evaluate(psapi.LevelRestricted, meta, spec)
			if r.Allowed {
				t.Errorf("allowed at restricted")
			}
			restricted := failingChecks(t, psapi.LevelRestricted, meta, spec)
			for _, id := range wantBaselineFailures {
				if !slices.Contains(restricted, id) {
					t.Errorf("restricted does not fail %s: %v", id, restricted)
				}
			}
			t.Logf("restricted: %v", restricted)

			// A cluster whose admission enforces baseline by default: the
			// chart's namespace labels admit the pod, no labels do not (as
			// after `helm install --create-namespace`).
			clusterDefault := psapi.Policy{
				Enforce: psapi.LevelVersion{Level: psapi.LevelBaseline, Version: psapi.LatestVersion()},
				Audit:   psapi.LevelVersion{Level: psapi.LevelRestricted, Version: psapi.LatestVersion()},
				Warn:    psapi.LevelVersion{Level: psapi.LevelRestricted, Version: psapi.LatestVersion()},
			}
			p, errs := psapi.PolicyToEvaluate(o.namespace.Labels, clusterDefault)
			if len(errs) != 0 {
				t.Fatalf("namespace labels: %v", errs)
			}
			if !p.FullyPrivileged() {
				t.Errorf("the namespace's labels give %s: want enforce, audit and warn privileged", p.String())
			}
			for mode, lv := range map[string]psapi.LevelVersion{"enforce": p.Enforce, "audit": p.Audit, "warn": p.Warn} {
				if r := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, meta, spec)); !r.Allowed {
					t.Errorf("%s %s in the chart's namespace: %s", mode, lv, r.ForbiddenDetail())
				}
			}
			p, _ = psapi.PolicyToEvaluate(nil, clusterDefault)
			if r := policy.AggregateCheckResults(evaluator.EvaluatePod(p.Enforce, meta, spec)); r.Allowed {
				t.Errorf("admitted in an unlabelled namespace of a baseline cluster")
			}
		})
	}
}
