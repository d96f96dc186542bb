package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/nsmount/admission"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// schemaRefusal is how Helm words a values.schema.json failure: the values
// were refused before any template ran.
const schemaRefusal = "values don't meet the specifications of the schema"

// TestBadValues: values that would make a broken DaemonSet, or that are
// typos, fail at render through values.schema.json, naming the value.
func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		file string
		sets []string
		at   string // the JSON pointer the error names
	}{
		{"image tag with a space", "", []string{"set:image.tag=v1 beta"}, "/image/tag"},
		{"image tag with a colon", "", []string{"set:image.tag=a:b"}, "/image/tag"},
		{"image repository with a tag", "", []string{"set:image.repository=ghcr.io/nsmount/nsmount:v1"}, "/image/repository"},
		{"image repository uppercase", "", []string{"set:image.repository=GHCR.io/nsmount"}, "/image/repository"},
		{"image digest not sha256", "", []string{"set:image.digest=md5:0123"}, "/image/digest"},
		{"pullPolicy unknown", "", []string{"set:image.pullPolicy=Sometimes"}, "/image/pullPolicy"},
		{"registrar tag empty", "", []string{"string:csi.registrar.image.tag="}, "/csi/registrar/image/tag"},
		{"csi.enabled a string", "", []string{"string:csi.enabled=true"}, "/csi/enabled"},
		{"csi.enabled a number", "csi: {enabled: 1}", nil, "/csi/enabled"},
		{"csi typo", "", []string{"set:csi.enable=false"}, "/csi"},
		{"top-level typo", "", []string{"set:kubeletdir=/var/lib/kubelet"}, "kubeletdir"},
		{"policy a string", "", []string{"set:policy=deny"}, "/policy"},
		{"policy a list", "policy: []", nil, "/policy"},
		{"policy removed", "", []string{"set:policy=null"}, "policy"},
		{"policy version 2", "", []string{"set:policy.version=2"}, "/policy/version"},
		{"policy version a string", "", []string{"string:policy.version=1"}, "/policy/version"},
		{"policy unknown key", "policy: {version: 1, allow_all: true}", nil, "allow_all"},
		{"policy rule unknown key", `
policy:
  allow:
    - {server: [nfs.example.test], networks: [192.0.2.0/24], exports: [/e], targets: [/d]}
`, nil, "/policy/allow/0"},
		{"policy rule without networks", `
policy:
  allow:
    - {servers: [nfs.example.test], exports: [/e], targets: [/d]}
`, nil, "/policy/allow/0"},
		{"policy rule with a host for a network", `
policy:
  allow:
    - {servers: [nfs.example.test], networks: [nfs.example.test], exports: [/e], targets: [/d]}
`, nil, "/policy/allow/0/networks/0"},
		{"policy export relative", `
policy:
  allow:
    - {servers: ["*"], networks: [192.0.2.0/24], exports: [export], targets: [/d]}
`, nil, "/policy/allow/0/exports/0"},
		{"kubeletDir relative", "", []string{"set:kubeletDir=var/lib/kubelet"}, "/kubeletDir"},
		{"kubeletDir trailing slash", "", []string{"set:kubeletDir=/var/lib/kubelet/"}, "/kubeletDir"},
		{"kubeletDir with ..", "", []string{"set:kubeletDir=/var/lib/../kubelet"}, "/kubeletDir"},
		{"kubeletDir with a space", "", []string{"set:kubeletDir=/var/lib/my kubelet"}, "/kubeletDir"},
		{"metrics port 0", "", []string{"set:metrics.port=0"}, "/metrics/port"},
		{"metrics port too big", "", []string{"set:metrics.port=70000"}, "/metrics/port"},
		{"metrics port a string", "", []string{"string:metrics.port=9477"}, "/metrics/port"},
		{"serviceMonitor interval", "", []string{"set:metrics.serviceMonitor.interval=often"}, "/metrics/serviceMonitor/interval"},
		{"requests without memory", "resources: {requests: {cpu: 50m, memory: null}}", nil, "/resources/requests"},
		{"requests not a quantity", "", []string{"set:resources.requests.cpu=lots"}, "/resources/requests/cpu"},
		{"resources unknown key", "", []string{"set:resources.request.cpu=1"}, "/resources"},
		{"priorityClassName uppercase", "", []string{"set:priorityClassName=System"}, "/priorityClassName"},
		{"tolerations an object", "tolerations: {operator: Exists}", nil, "/tolerations"},
		{"nodeSelector value a number", "nodeSelector: {zone: 1}", nil, "/nodeSelector/zone"},
		{"namespace.create a string", "", []string{"string:namespace.create=yes"}, "/namespace/create"},
		{"fullnameOverride with dots", "", []string{"set:fullnameOverride=nsmount.agent"}, "/fullnameOverride"},
		{"watch duration without a unit", "", []string{"set:watch.remountTimeout=30"}, "/watch/remountTimeout"},
		{"watch duration zero", "", []string{"set:watch.remountTimeout=0s"}, "/watch/remountTimeout"},
		{"watch duration negative", "", []string{"set:watch.probeTimeout=-1s"}, "/watch/probeTimeout"},
		{"watch duration a number", "watch: {interval: 30}", nil, "/watch/interval"},
		{"watch probeParallel zero", "", []string{"set:watch.probeParallel=0"}, "/watch/probeParallel"},
		{"watch probeParallel a fraction", "watch: {probeParallel: 1.5}", nil, "/watch/probeParallel"},
		{"watch remountParallel a string", "", []string{"string:watch.remountParallel=4"}, "/watch/remountParallel"},
		{"watch probeRate zero", "", []string{"set:watch.probeRate=0"}, "/watch/probeRate"},
		{"watch keepConnections a string", "", []string{"string:watch.keepConnections=true"}, "/watch/keepConnections"},
		{"watch typo", "", []string{"set:watch.remountTimout=8s"}, "/watch"},
		{"extraArgs a string", "", []string{"set:extraArgs=--all-ops"}, "/extraArgs"},
		{"extraArgs value as its own item", `extraArgs: ["--csi-wait", "3s"]`, nil, "/extraArgs/1"},
		{"extraArgs single dash", `extraArgs: ["-v"]`, nil, "/extraArgs/0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(values(t, tc.file, tc.sets...), defaultRelease)
			if err == nil {
				t.Fatalf("rendered")
			}
			msg := err.Error()
			if !strings.Contains(msg, schemaRefusal) || !strings.Contains(msg, tc.at) {
				t.Errorf("error %q: want the schema's refusal naming %s", msg, tc.at)
			}
		})
	}
}

// TestValuesAccepted: values an operator may well set render, and the
// metrics port moves everything that names it.
func TestValuesAccepted(t *testing.T) {
	vals := values(t, `
image:
  repository: registry.example.test:5000/infra/nsmount
  tag: v0.1.0_rc1
imagePullSecrets: [{name: regcred}]
csi:
  registrar:
    image:
      digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
metrics:
  port: 19477
  service:
    annotations: {example.test/team: storage}
resources:
  requests: {cpu: "0.1", memory: 128Mi}
  limits: {memory: 1Gi}
priorityClassName: ""
nodeSelector: {node-role.example.test/storage: "true"}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions: [{key: example.test/nfs, operator: Exists}]
podAnnotations: {example.test/owner: storage}
podLabels: {example.test/tier: node}
global: {imageRegistry: ignored}
`)
	_, o := mustDecode(t, vals, defaultRelease)
	checkCommon(t, o, defaultRelease)
	spec := o.daemonSet.Spec.Template.Spec
	agent := container(&spec, "agent")
	equal(t, "agent image", agent.Image, "registry.example.test:5000/infra/nsmount:v0.1.0_rc1")
	equal(t, "registrar image", container(&spec, "node-driver-registrar").Image,
		"registry.k8s.io/sig-storage/csi-node-driver-registrar@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	equal(t, "agent args", agent.Args, wantArgs(true, 19477))
	equal(t, "agent ports", agent.Ports, []corev1.ContainerPort{{Name: "metrics", ContainerPort: 19477, Protocol: corev1.ProtocolTCP}})
	if p := o.service.Spec.Ports; len(p) != 1 || p[0].Port != 19477 {
		t.Errorf("Service ports %+v: want 19477", p)
	}
	equal(t, "Service annotations", o.service.Annotations, map[string]string{
		"prometheus.io/scrape": "true", "prometheus.io/port": "19477", "prometheus.io/path": "/metrics",
		"example.test/team": "storage",
	})
	equal(t, "imagePullSecrets", spec.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "regcred"}})
	equal(t, "priorityClassName", spec.PriorityClassName, "")
	equal(t, "memory limit", agent.Resources.Limits[corev1.ResourceMemory], resource.MustParse("1Gi"))
	if spec.Affinity == nil || spec.Affinity.NodeAffinity == nil {
		t.Errorf("affinity %v: not passed on", spec.Affinity)
	}
	tpl := o.daemonSet.Spec.Template
	if tpl.Annotations["example.test/owner"] != "storage" || tpl.Labels["example.test/tier"] != "node" {
		t.Errorf("pod annotations %v labels %v: podAnnotations/podLabels not passed on", tpl.Annotations, tpl.Labels)
	}

	_, o = mustDecode(t, values(t, "", "set:metrics.service.scrapeAnnotations=false"), defaultRelease)
	if len(o.service.Annotations) != 0 {
		t.Errorf("Service annotations %v with scrapeAnnotations=false", o.service.Annotations)
	}
}

// TestPolicyVectors holds the schema's policy part against the agent's own
// parser, on the parser's test vectors (nsmount/admission/testdata/policies):
// every good policy renders and the agent accepts what the ConfigMap says;
// every bad one the schema can see is refused at render, and the agent
// refuses the others when it loads them.
func TestPolicyVectors(t *testing.T) {
	dir := filepath.Join("..", "nsmount", "admission", "testdata", "policies")
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no policy vectors in %s: %v", dir, err)
	}
	// What values.schema.json refuses: the policy's structure. CIDRs,
	// patterns and options are the agent's to judge.
	schemaRefuses := []string{
		"fail_not_object.json", "fail_version.json", "fail_unknown_field.json", "fail_rule_unknown_field.json",
		"fail_no_networks.json", "fail_no_servers.json", "fail_export_relative.json", "fail_network_bad.json",
		"fail_key_case.json",
	}
	// What values cannot say: text after the object, or a key given twice
	// (values are a map: it keeps one). And a policy without "version" gets
	// the chart's default, version 1, so it renders a valid one.
	notValues := map[string]string{
		"fail_trailing.json":   "data after the JSON object",
		"fail_key_twice.json":  "a repeated key",
		"fail_no_version.json": "the chart's default supplies version 1",
	}
	var good, refused, agent int
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(strings.TrimSuffix(name, ".json"), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var p any
			if err := json.Unmarshal(data, &p); err != nil {
				if _, ok := notValues[name]; !ok {
					t.Fatalf("%v: not a JSON value, and not listed as one", err)
				}
				return
			}
			r, err := render(map[string]any{"policy": p}, defaultRelease)
			switch {
			case strings.HasPrefix(name, "good_"):
				if err != nil {
					t.Fatalf("a good policy is refused: %v", err)
				}
				o, err := decode(r)
				if err != nil {
					t.Fatal(err)
				}
				policyOf(t, o)
				good++
			case slices.Contains(schemaRefuses, name):
				if err == nil || !strings.Contains(err.Error(), schemaRefusal) {
					t.Fatalf("render: %v; want the schema to refuse it", err)
				}
				refused++
			case notValues[name] != "":
				if err != nil {
					t.Fatalf("render: %v (%s)", err, notValues[name])
				}
			default:
				// Structurally sound: rendered, and left to the agent.
				if err != nil {
					t.Fatalf("render: %v; the schema refuses it, so list it in schemaRefuses", err)
				}
				o, err := decode(r)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := admission.ParsePolicy([]byte(o.configMap.Data["policy.json"])); err == nil {
					t.Fatalf("the agent accepts the rendered policy of a fail_ vector:\n%s", o.configMap.Data["policy.json"])
				}
				agent++
			}
		})
	}
	for _, name := range slices.Concat(schemaRefuses, keys(notValues)) {
		if !slices.Contains(files, filepath.Join(dir, name)) {
			t.Errorf("vector %s is gone: update this test", name)
		}
	}
	t.Logf("%d good policies render; %d bad ones refused by the schema, %d left to the agent", good, refused, agent)
}
