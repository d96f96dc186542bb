package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/nsmount/nsmount/nsmount/admission"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

const (
	appVersion     = "0.1.0"
	agentImage     = "ghcr.io/nsmount/nsmount:" + appVersion
	registrarImage = "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.18.0"
)

// wantArgs is the agent's command line: the contract with `nsmount agent`.
func wantArgs(csi bool, metricsPort int) []string {
	args := []string{
		"agent",
		"--policy", "/etc/nsmount/policy.json",
		"--state-dir", "/run/nsmount",
		"--nri-socket", "/var/run/nri/nri.sock",
		"--hook-binary", "/opt/nsmount/bin/nsmount",
		"--hook-policy", "/opt/nsmount/policy.json",
		"--metrics-address", fmt.Sprintf(":%d", metricsPort),
		"--log-format", "json",
	}
	if csi {
		args = append(args, "--csi-endpoint", "unix:///csi/csi.sock", "--node-id", "$(NODE_NAME)", "--kubelet-dir", "/var/lib/kubelet")
	}
	return args
}

// A mountWant is one volume mount of a container and where it comes from.
type mountWant struct {
	container   string
	mountPath   string
	hostPath    string // "" for the policy's ConfigMap
	hostType    corev1.HostPathType
	readOnly    bool
	propagation corev1.MountPropagationMode // "" for none
}

// wantMounts are every volume mount of the pod, for a kubelet root dir and
// with or without CSI. The paths the agent hands to the host (to runc's
// hooks, from kubelet) are mounted at the host's own path.
func wantMounts(kubeletDir string, csi bool) []mountWant {
	m := []mountWant{
		{"install", "/opt/nsmount", "/opt/nsmount", corev1.HostPathDirectoryOrCreate, false, ""},
		{"agent", "/var/run/nri", "/var/run/nri", corev1.HostPathDirectoryOrCreate, false, ""},
		{"agent", "/run/nsmount", "/run/nsmount", corev1.HostPathDirectoryOrCreate, false, ""},
		{"agent", "/opt/nsmount", "/opt/nsmount", corev1.HostPathDirectoryOrCreate, false, ""},
		{"agent", "/etc/nsmount", "", "", true, ""},
		{"agent", "/dev/kmsg", "/dev/kmsg", corev1.HostPathCharDev, true, ""},
	}
	if csi {
		plugin := kubeletDir + "/plugins/nfs.nsmount.io"
		m = append(m,
			mountWant{"agent", kubeletDir + "/pods", kubeletDir + "/pods", corev1.HostPathDirectory, false, corev1.MountPropagationBidirectional},
			mountWant{"agent", "/csi", plugin, corev1.HostPathDirectoryOrCreate, false, ""},
			mountWant{"node-driver-registrar", "/csi", plugin, corev1.HostPathDirectoryOrCreate, false, ""},
			mountWant{"node-driver-registrar", "/registration", kubeletDir + "/plugins_registry", corev1.HostPathDirectory, false, ""},
		)
	}
	return m
}

// checkMounts compares the pod's mounts and volumes with want: every mount is
// wanted, every wanted mount is there, and no volume is left unused.
func checkMounts(t *testing.T, spec *corev1.PodSpec, want []mountWant) {
	t.Helper()
	var got []mountWant
	used := map[string]bool{}
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		for _, vm := range c.VolumeMounts {
			used[vm.Name] = true
			v := volume(spec, vm.Name)
			if v == nil {
				t.Errorf("container %s mounts %q: no such volume", c.Name, vm.Name)
				continue
			}
			g := mountWant{container: c.Name, mountPath: vm.MountPath, readOnly: vm.ReadOnly}
			if vm.MountPropagation != nil {
				g.propagation = *vm.MountPropagation
			}
			switch {
			case v.HostPath != nil:
				g.hostPath = v.HostPath.Path
				if v.HostPath.Type != nil {
					g.hostType = *v.HostPath.Type
				}
			case v.ConfigMap != nil:
			default:
				t.Errorf("volume %s: neither hostPath nor configMap", v.Name)
			}
			got = append(got, g)
		}
	}
	diffLists(t, "volume mounts", mountStrings(got), mountStrings(want))
	for _, v := range spec.Volumes {
		if !used[v.Name] {
			t.Errorf("volume %s is mounted by no container", v.Name)
		}
	}
}

// checkCommon checks what every rendering has, whatever the values: strict
// decoding is done; here are names, labels and namespaces of every object,
// and the DaemonSet's pods as the Service selects them.
func checkCommon(t *testing.T, o *objects, rel release) {
	t.Helper()
	for _, x := range o.all {
		m := x.meta
		what := x.source + " " + x.gvk
		for _, e := range validation.IsDNS1123Subdomain(m.Name) {
			t.Errorf("%s: name %q: %s", what, m.Name, e)
		}
		switch {
		case x.namespaced && m.Namespace != rel.namespace:
			t.Errorf("%s: namespace %q, want the release's %q", what, m.Namespace, rel.namespace)
		case !x.namespaced && m.Namespace != "":
			t.Errorf("%s: cluster-scoped, but namespace %q", what, m.Namespace)
		}
		want := map[string]string{
			"app.kubernetes.io/name":       "nsmount",
			"app.kubernetes.io/instance":   rel.name,
			"app.kubernetes.io/version":    appVersion,
			"app.kubernetes.io/managed-by": "Helm",
			"app.kubernetes.io/part-of":    "nsmount",
		}
		for k, v := range want {
			if m.Labels[k] != v {
				t.Errorf("%s: label %s=%q, want %q", what, k, m.Labels[k], v)
			}
		}
		checkLabels(t, what, m.Labels)
		for k := range m.Annotations {
			for _, e := range validation.IsQualifiedName(k) {
				t.Errorf("%s: annotation key %q: %s", what, k, e)
			}
		}
	}
	svc, ds := o.service, o.daemonSet
	if svc == nil || ds == nil || o.serviceAccount == nil || o.configMap == nil {
		t.Fatalf("kinds %v: want a ServiceAccount, a ConfigMap, a Service and a DaemonSet", o.gvks())
	}
	for _, e := range validation.IsDNS1035Label(svc.Name) {
		t.Errorf("Service name %q: %s", svc.Name, e)
	}
	tpl := ds.Spec.Template
	checkLabels(t, "pod template", tpl.Labels)
	sel := ds.Spec.Selector
	if sel == nil || len(sel.MatchExpressions) != 0 {
		t.Fatalf("DaemonSet selector %v: want matchLabels only", sel)
	}
	equal(t, "DaemonSet selector", sel.MatchLabels, map[string]string{
		"app.kubernetes.io/name": "nsmount", "app.kubernetes.io/instance": rel.name,
	})
	if !labels.SelectorFromSet(sel.MatchLabels).Matches(labels.Set(tpl.Labels)) {
		t.Errorf("the DaemonSet's selector %v does not select its own pods %v", sel.MatchLabels, tpl.Labels)
	}
	// The Service must select exactly the agent's pods: its selector is the
	// DaemonSet's (a subset would also match another release's pods).
	equal(t, "Service selector", svc.Spec.Selector, sel.MatchLabels)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(tpl.Labels)) {
		t.Errorf("the Service's selector %v does not select the agent's pods %v", svc.Spec.Selector, tpl.Labels)
	}
	if got := tpl.Spec.ServiceAccountName; got != o.serviceAccount.Name {
		t.Errorf("pods run as %q, the chart's ServiceAccount is %q", got, o.serviceAccount.Name)
	}
	for _, v := range tpl.Spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name != o.configMap.Name {
			t.Errorf("volume %s: ConfigMap %q, the chart's is %q", v.Name, v.ConfigMap.Name, o.configMap.Name)
		}
	}
}

func (m mountWant) String() string {
	from := "the policy ConfigMap"
	if m.hostPath != "" {
		from = fmt.Sprintf("hostPath %s (%s)", m.hostPath, m.hostType)
	}
	s := fmt.Sprintf("%s: %s <- %s", m.container, m.mountPath, from)
	if m.readOnly {
		s += " ro"
	}
	if m.propagation != "" {
		s += " " + string(m.propagation)
	}
	return s
}

func mountStrings(ms []mountWant) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.String())
	}
	return out
}

// diffLists reports what got lacks of want and has beyond it, or a
// different order.
func diffLists(t *testing.T, what string, got, want []string) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	reported := false
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s: missing %s", what, w)
			reported = true
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			t.Errorf("%s: unexpected %s", what, g)
			reported = true
		}
	}
	if !reported {
		t.Errorf("%s: order\n got %q\nwant %q", what, got, want)
	}
}

func checkLabels(t *testing.T, what string, l map[string]string) {
	t.Helper()
	for k, v := range l {
		for _, e := range validation.IsQualifiedName(k) {
			t.Errorf("%s: label key %q: %s", what, k, e)
		}
		for _, e := range validation.IsValidLabelValue(v) {
			t.Errorf("%s: label %s value %q: %s", what, k, v, e)
		}
	}
}

// policyOf returns the ConfigMap's policy.json, checked to be what the agent
// accepts: one JSON object, version 1, parsed by the agent's own parser.
func policyOf(t *testing.T, o *objects) map[string]any {
	t.Helper()
	text, ok := o.configMap.Data["policy.json"]
	if !ok || len(o.configMap.Data) != 1 || len(o.configMap.BinaryData) != 0 {
		t.Fatalf("ConfigMap data keys %v: want policy.json only", keys(o.configMap.Data))
	}
	var p map[string]any
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	if err := dec.Decode(&p); err != nil {
		t.Fatalf("policy.json is not a JSON object: %v\n%s", err, text)
	}
	if dec.More() {
		t.Fatalf("policy.json: data after the object\n%s", text)
	}
	if p["version"] != json.Number("1") {
		t.Errorf("policy.json version %v, want 1", p["version"])
	}
	if _, err := admission.ParsePolicy([]byte(text)); err != nil {
		t.Errorf("the agent would refuse the policy: %v\n%s", err, text)
	}
	return p
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestDefaults checks the default render against the agent's contract.
func TestDefaults(t *testing.T) {
	_, o := mustDecode(t, values(t, ""), defaultRelease)
	checkCommon(t, o, defaultRelease)
	equal(t, "kinds, in install order", o.gvks(), []string{
		"v1/ServiceAccount", "v1/ConfigMap", "v1/Service", "apps/v1/DaemonSet", "storage.k8s.io/v1/CSIDriver",
	})

	// The account has no API access (no Role is rendered at all: NRI and
	// CSI's podInfoOnMount give the agent the pods it needs), and no token.
	if a := o.serviceAccount.AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("ServiceAccount automountServiceAccountToken %v, want false", a)
	}

	spec := o.daemonSet.Spec.Template.Spec
	if !spec.HostPID || spec.HostNetwork || spec.HostIPC {
		t.Errorf("hostPID %v hostNetwork %v hostIPC %v: want true, false, false", spec.HostPID, spec.HostNetwork, spec.HostIPC)
	}
	if a := spec.AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("pod automountServiceAccountToken %v, want false", a)
	}
	equal(t, "priorityClassName", spec.PriorityClassName, "system-node-critical")
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g != 30 {
		t.Errorf("terminationGracePeriodSeconds %v, want 30", g)
	}
	equal(t, "tolerations", spec.Tolerations, []corev1.Toleration{{Operator: corev1.TolerationOpExists}})
	for _, taint := range []corev1.Taint{
		{Key: "node.kubernetes.io/not-ready", Effect: corev1.TaintEffectNoExecute},
		{Key: "node.kubernetes.io/unschedulable", Effect: corev1.TaintEffectNoSchedule},
		{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule},
		{Key: "example.test/gpu", Value: "a100", Effect: corev1.TaintEffectPreferNoSchedule},
	} {
		tolerated := slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool { return tl.ToleratesTaint(logr.Discard(), &taint, true) })
		if !tolerated {
			t.Errorf("taint %s is not tolerated", taint.ToString())
		}
	}
	equal(t, "nodeSelector", spec.NodeSelector, map[string]string{"kubernetes.io/os": "linux"})

	// The init container puts the binary on the host for runc's hooks.
	if len(spec.InitContainers) != 1 {
		t.Fatalf("%d init containers, want 1", len(spec.InitContainers))
	}
	install := spec.InitContainers[0]
	equal(t, "init image", install.Image, agentImage)
	equal(t, "init command", slices.Concat(install.Command, install.Args),
		[]string{"/usr/local/bin/nsmount", "install", "--to", "/opt/nsmount/bin"})

	names := func(cs []corev1.Container) (out []string) {
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return out
	}
	equal(t, "containers", names(spec.Containers), []string{"agent", "node-driver-registrar"})
	agent := container(&spec, "agent")
	equal(t, "agent image", agent.Image, agentImage)
	equal(t, "agent command", agent.Command, []string{"/usr/local/bin/nsmount"})
	equal(t, "agent args", agent.Args, wantArgs(true, 9477))
	if sc := agent.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Errorf("agent securityContext %v: want privileged", sc)
	}
	// $(NODE_NAME) in the args is kubelet's expansion of this variable.
	equal(t, "agent env", agent.Env, []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"},
	}}})
	equal(t, "agent ports", agent.Ports, []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9477, Protocol: corev1.ProtocolTCP}})
	for name, p := range map[string]*corev1.Probe{"readiness": agent.ReadinessProbe, "liveness": agent.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("agent %s probe %v: want an HTTP GET", name, p)
			continue
		}
		if p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "metrics" {
			t.Errorf("agent %s probe GET %s on port %s, want /healthz on metrics", name, p.HTTPGet.Path, p.HTTPGet.Port.String())
		}
	}
	if agent.StartupProbe != nil {
		t.Errorf("agent startup probe %v: none expected", agent.StartupProbe)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := agent.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("agent requests no %s", r)
		}
	}

	reg := container(&spec, "node-driver-registrar")
	equal(t, "registrar image", reg.Image, registrarImage)
	equal(t, "registrar args", reg.Args, []string{
		"--csi-address=/csi/csi.sock",
		"--kubelet-registration-path=/var/lib/kubelet/plugins/nfs.nsmount.io/csi.sock",
		"--http-endpoint=:9809",
	})
	if sc := reg.SecurityContext; sc == nil || (sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("registrar securityContext %v: want one, unprivileged", sc)
	}
	if p := reg.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "registrar" {
		t.Errorf("registrar liveness probe %v: want GET /healthz on registrar (9809)", p)
	}

	checkMounts(t, &spec, wantMounts("/var/lib/kubelet", true))
	for _, v := range spec.Volumes {
		// The agent makes a sysfs of each netns it needs itself
		// (nsmount/netsysfs): the host's /sys would show the host's NFS
		// client only.
		if v.HostPath != nil && (v.HostPath.Path == "/sys" || strings.HasPrefix(v.HostPath.Path, "/sys/")) {
			t.Errorf("volume %s mounts the host's %s", v.Name, v.HostPath.Path)
		}
	}
	policyVol := volume(&spec, "policy")
	if cm := policyVol.ConfigMap; cm == nil || cm.DefaultMode == nil || *cm.DefaultMode != 0o444 ||
		!slices.Equal(cm.Items, []corev1.KeyToPath{{Key: "policy.json", Path: "policy.json"}}) {
		t.Errorf("policy volume %+v: want policy.json of the ConfigMap, mode 0444 (the agent refuses a writable policy)", cm)
	}

	d := o.csiDriver.Spec
	switch {
	case o.csiDriver.Name != "nfs.nsmount.io":
		t.Errorf("CSIDriver %q, want nfs.nsmount.io", o.csiDriver.Name)
	case d.AttachRequired == nil || *d.AttachRequired:
		t.Errorf("CSIDriver attachRequired %v, want false", d.AttachRequired)
	case d.PodInfoOnMount == nil || !*d.PodInfoOnMount:
		t.Errorf("CSIDriver podInfoOnMount %v, want true", d.PodInfoOnMount)
	case d.FSGroupPolicy == nil || *d.FSGroupPolicy != storagev1.NoneFSGroupPolicy:
		t.Errorf("CSIDriver fsGroupPolicy %v, want None", d.FSGroupPolicy)
	case d.RequiresRepublish == nil || *d.RequiresRepublish:
		t.Errorf("CSIDriver requiresRepublish %v, want false", d.RequiresRepublish)
	case d.StorageCapacity != nil && *d.StorageCapacity:
		t.Errorf("CSIDriver storageCapacity true: nsmount has no capacity to report")
	}
	equal(t, "CSIDriver volumeLifecycleModes", d.VolumeLifecycleModes,
		[]storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent, storagev1.VolumeLifecycleEphemeral})

	svc := o.service
	equal(t, "Service clusterIP", svc.Spec.ClusterIP, corev1.ClusterIPNone)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || svc.Spec.Ports[0].Port != 9477 ||
		svc.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("Service ports %+v: want metrics 9477 -> the pods' metrics port", svc.Spec.Ports)
	}
	equal(t, "Service annotations", svc.Annotations, map[string]string{
		"prometheus.io/scrape": "true", "prometheus.io/port": "9477", "prometheus.io/path": "/metrics",
	})
	for k := range o.daemonSet.Spec.Template.Annotations {
		if strings.HasPrefix(k, "prometheus.io/") {
			t.Errorf("pod annotation %s: the Service carries the scrape annotations, pods would be scraped twice", k)
		}
	}

	equal(t, "policy", policyOf(t, o), map[string]any{"version": json.Number("1")})
	if sum := o.daemonSet.Spec.Template.Annotations["checksum/policy"]; !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(sum) {
		t.Errorf("checksum/policy %q: want a sha256", sum)
	}
}

// TestCSIDisabled: without CSI, nothing of it is rendered: no CSIDriver, no
// registrar, no CSI flags, no kubelet directories and no Bidirectional
// propagation at all.
func TestCSIDisabled(t *testing.T) {
	_, o := mustDecode(t, values(t, "", "set:csi.enabled=false"), defaultRelease)
	checkCommon(t, o, defaultRelease)
	if o.csiDriver != nil {
		t.Errorf("CSIDriver rendered with csi.enabled=false")
	}
	spec := o.daemonSet.Spec.Template.Spec
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "agent" {
		t.Errorf("containers %d: want the agent only", len(spec.Containers))
	}
	agent := container(&spec, "agent")
	equal(t, "agent args", agent.Args, wantArgs(false, 9477))
	checkMounts(t, &spec, wantMounts("/var/lib/kubelet", false))
}

// TestServiceMonitor: the prometheus-operator ServiceMonitor, decoded into its
// own type, scrapes the metrics port of the chart's Service.
func TestServiceMonitor(t *testing.T) {
	vals := values(t, `
metrics:
  serviceMonitor:
    enabled: true
    interval: 15s
    labels:
      release: kube-prometheus-stack
`)
	_, o := mustDecode(t, vals, defaultRelease)
	checkCommon(t, o, defaultRelease)
	sm := o.serviceMonitor
	if sm == nil {
		t.Fatalf("kinds %v: no ServiceMonitor", o.gvks())
	}
	equal(t, "ServiceMonitor release label", sm.Labels["release"], "kube-prometheus-stack")
	equal(t, "namespaceSelector", sm.Spec.NamespaceSelector.MatchNames, []string{defaultRelease.namespace})
	if !labels.SelectorFromSet(sm.Spec.Selector.MatchLabels).Matches(labels.Set(o.service.Labels)) || len(sm.Spec.Selector.MatchExpressions) != 0 {
		t.Errorf("ServiceMonitor selector %v does not select the Service %v", sm.Spec.Selector.MatchLabels, o.service.Labels)
	}
	if len(sm.Spec.Endpoints) != 1 {
		t.Fatalf("%d endpoints, want 1", len(sm.Spec.Endpoints))
	}
	ep := sm.Spec.Endpoints[0]
	if ep.Port != o.service.Spec.Ports[0].Name || ep.Path != "/metrics" || ep.Interval != "15s" {
		t.Errorf("endpoint port %q path %q interval %q: want the Service's metrics port, /metrics, 15s", ep.Port, ep.Path, ep.Interval)
	}

	_, o = mustDecode(t, values(t, ""), defaultRelease)
	if o.serviceMonitor != nil {
		t.Errorf("a ServiceMonitor by default: it needs prometheus-operator's CRDs")
	}
}

// TestKubeletDir: a kubelet root directory elsewhere (microk8s) moves every
// kubelet path, and no default path is left behind.
func TestKubeletDir(t *testing.T) {
	const dir = "/var/snap/microk8s/common/var/lib/kubelet"
	r, o := mustDecode(t, values(t, "", "set:kubeletDir="+dir), defaultRelease)
	checkCommon(t, o, defaultRelease)
	spec := o.daemonSet.Spec.Template.Spec
	checkMounts(t, &spec, wantMounts(dir, true))
	// The agent takes CSI target paths below kubelet's directory only.
	agent := container(&spec, "agent")
	if i := slices.Index(agent.Args, "--kubelet-dir"); i < 0 || i+1 >= len(agent.Args) || agent.Args[i+1] != dir {
		t.Errorf("agent args %q: want --kubelet-dir %s", agent.Args, dir)
	}
	reg := container(&spec, "node-driver-registrar")
	if !slices.Contains(reg.Args, "--kubelet-registration-path="+dir+"/plugins/nfs.nsmount.io/csi.sock") {
		t.Errorf("registrar args %q: want the registration path under %s", reg.Args, dir)
	}
	text := strings.ReplaceAll(string(r.text()), dir, "KUBELET")
	if strings.Contains(text, "/var/lib/kubelet") {
		t.Errorf("/var/lib/kubelet left in the render with kubeletDir=%s", dir)
	}
}

// TestPolicyValue: a real policy, given as YAML, reaches the ConfigMap as the
// same JSON object, which the agent's own parser accepts; a new policy
// changes the pods' checksum (a rollout).
func TestPolicyValue(t *testing.T) {
	vals := values(t, `
policy:
  version: 1
  enforce_options: [noexec]
  allow:
    - name: team-a
      servers: [nfs.example.test, "*.storage.example.test"]
      networks: [198.51.100.0/24]
      exports: [/export/a, /export/a/*]
      targets: [/data, /mnt/*]
      options: [vers, nolock, hard, noatime]
      enforce_options: [ro]
`)
	_, o := mustDecode(t, vals, defaultRelease)
	checkCommon(t, o, defaultRelease)
	got := policyOf(t, o)
	want := map[string]any{
		"version":         json.Number("1"),
		"enforce_options": []any{"noexec"},
		"allow": []any{map[string]any{
			"name":            "team-a",
			"servers":         []any{"nfs.example.test", "*.storage.example.test"},
			"networks":        []any{"198.51.100.0/24"},
			"exports":         []any{"/export/a", "/export/a/*"},
			"targets":         []any{"/data", "/mnt/*"},
			"options":         []any{"vers", "nolock", "hard", "noatime"},
			"enforce_options": []any{"ro"},
		}},
	}
	equal(t, "policy", got, want)

	_, def := mustDecode(t, values(t, ""), defaultRelease)
	a, b := def.daemonSet.Spec.Template.Annotations["checksum/policy"], o.daemonSet.Spec.Template.Annotations["checksum/policy"]
	if a == b {
		t.Errorf("checksum/policy %s for both policies: a new policy would not roll the agents", a)
	}
}

// TestNamespaceCreate: the chart's own namespace carries the Pod Security
// labels and comes first; without namespace.create there is none.
func TestNamespaceCreate(t *testing.T) {
	_, o := mustDecode(t, values(t, "", "set:namespace.create=true"), defaultRelease)
	checkCommon(t, o, defaultRelease)
	if o.namespace == nil || o.all[0].gvk != "v1/Namespace" {
		t.Fatalf("kinds %v: want a Namespace first", o.gvks())
	}
	equal(t, "namespace name", o.namespace.Name, defaultRelease.namespace)
	for _, mode := range []string{"enforce", "audit", "warn"} {
		k := "pod-security.kubernetes.io/" + mode
		if v := o.namespace.Labels[k]; v != "privileged" {
			t.Errorf("namespace label %s=%q, want privileged", k, v)
		}
	}
	_, o = mustDecode(t, values(t, ""), defaultRelease)
	if o.namespace != nil {
		t.Errorf("a Namespace without namespace.create")
	}
}

// TestImage: the tag defaults to the appVersion, may be set, and a digest
// pins the image instead.
func TestImage(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name string
		sets []string
		want string
	}{
		{"default", nil, agentImage},
		{"tag", []string{"set:image.tag=v0.2.0-rc.1"}, "ghcr.io/nsmount/nsmount:v0.2.0-rc.1"},
		{"registry with port", []string{"set:image.repository=localhost:5000/nsmount"}, "localhost:5000/nsmount:" + appVersion},
		{"digest", []string{"set:image.tag=ignored", "set:image.digest=" + digest}, "ghcr.io/nsmount/nsmount@" + digest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, o := mustDecode(t, values(t, "", tc.sets...), defaultRelease)
			spec := o.daemonSet.Spec.Template.Spec
			equal(t, "agent image", container(&spec, "agent").Image, tc.want)
			equal(t, "init image", container(&spec, "install").Image, tc.want)
		})
	}
}

// TestNames: the longest release name Helm allows (53 characters) and name
// overrides still give valid names; a release named like the chart is not
// repeated.
func TestNames(t *testing.T) {
	long := release{strings.Repeat("a", 53), "ns"}
	for _, tc := range []struct {
		name string
		rel  release
		sets []string
		ds   string
	}{
		{"release named nsmount", defaultRelease, nil, "nsmount"},
		{"other release", release{"storage", "kube-system"}, nil, "storage-nsmount"},
		{"long release", long, nil, strings.Repeat("a", 52)},
		{"fullnameOverride", defaultRelease, []string{"set:fullnameOverride=nfs-agent"}, "nfs-agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, o := mustDecode(t, values(t, "", tc.sets...), tc.rel)
			checkCommon(t, o, tc.rel)
			equal(t, "DaemonSet name", o.daemonSet.Name, tc.ds)
		})
	}
}

// TestNotes: NOTES.txt renders and says what an operator must do next.
func TestNotes(t *testing.T) {
	r := mustRender(t, values(t, ""), defaultRelease)
	for _, s := range []string{
		"rollout status daemonset/nsmount",
		"pod-security.kubernetes.io/enforce=privileged",
		"/var/run/nri/nri.sock",
		"every mount is denied",
		"nfs.nsmount.io",
		"nsmount-system/nsmount-metrics",
	} {
		if !strings.Contains(r.notes, s) {
			t.Errorf("NOTES.txt lacks %q:\n%s", s, r.notes)
		}
	}
	r = mustRender(t, values(t, "", "set:namespace.create=true", "set:csi.enabled=false"), defaultRelease)
	if strings.Contains(r.notes, "kubectl label") || strings.Contains(r.notes, "nfs.nsmount.io") {
		t.Errorf("NOTES.txt with the namespace made and CSI off still says to label it or names the CSI driver:\n%s", r.notes)
	}
	if bytes.Contains(r.text(), []byte("NOTES")) {
		t.Errorf("NOTES.txt in the manifests")
	}
}
