package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"helm.sh/helm/v3/pkg/strvals"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"sigs.k8s.io/yaml"
)

// chartDir is the chart, relative to this package.
var chartDir = filepath.Join("helm", "nsmount")

// kubeVersion is the cluster version the chart is rendered for: the one the
// k8s.io/api types of these tests come from.
const kubeVersion = "v1.37.0"

// A release is what `helm install NAME -n NAMESPACE` names.
type release struct{ name, namespace string }

var defaultRelease = release{"nsmount", "nsmount-system"}

// values builds chart values the way the helm CLI does: a values file (YAML)
// first, then --set and --set-string in order ("set:K=V", "string:K=V").
func values(t testing.TB, file string, sets ...string) map[string]any {
	t.Helper()
	vals := map[string]any{}
	if file != "" {
		v, err := chartutil.ReadValues([]byte(file))
		if err != nil {
			t.Fatalf("values file: %v", err)
		}
		vals = v.AsMap()
	}
	for _, s := range sets {
		kind, kv, ok := strings.Cut(s, ":")
		var err error
		switch {
		case ok && kind == "set":
			err = strvals.ParseInto(kv, vals)
		case ok && kind == "string":
			err = strvals.ParseIntoString(kv, vals)
		default:
			t.Fatalf("values: %q: want set:K=V or string:K=V", s)
		}
		if err != nil {
			t.Fatalf("values: %s: %v", s, err)
		}
	}
	return vals
}

// A rendering is one render of the chart: its manifests in Helm's install
// order and its NOTES.txt.
type rendering struct {
	manifests []releaseutil.Manifest
	notes     string
}

// render renders the chart as `helm install` would (schema validation
// included), with the template engine in strict mode: a template that reads
// a value missing from values.yaml fails here.
func render(vals map[string]any, rel release) (*rendering, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, fmt.Errorf("load chart: %w", err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		return nil, err
	}
	caps.KubeVersion = *kv
	if !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, kv.String()) {
		return nil, fmt.Errorf("chart's kubeVersion %q does not allow %s", ch.Metadata.KubeVersion, kv)
	}
	top, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{
		Name: rel.name, Namespace: rel.namespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return nil, err
	}
	files, err := engine.Engine{Strict: true}.Render(ch, top)
	if err != nil {
		return nil, err
	}
	r := &rendering{}
	for name, text := range files {
		if strings.HasSuffix(name, "/NOTES.txt") {
			r.notes = text
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	if len(hooks) != 0 {
		return nil, fmt.Errorf("the chart has %d hooks; plain manifests cannot carry them", len(hooks))
	}
	r.manifests = manifests
	return r, nil
}

// text is the rendering as `helm template` prints it.
func (r *rendering) text() []byte {
	var b bytes.Buffer
	for _, m := range r.manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	return b.Bytes()
}

// mustRender renders or fails the test.
func mustRender(t testing.TB, vals map[string]any, rel release) *rendering {
	t.Helper()
	r, err := render(vals, rel)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return r
}

// objects are the decoded manifests of one rendering, by kind.
type objects struct {
	all            []object
	namespace      *corev1.Namespace
	serviceAccount *corev1.ServiceAccount
	configMap      *corev1.ConfigMap
	service        *corev1.Service
	daemonSet      *appsv1.DaemonSet
	csiDriver      *storagev1.CSIDriver
	serviceMonitor *monitoringv1.ServiceMonitor
}

// An object is one decoded manifest.
type object struct {
	source     string // the template it came from
	gvk        string // apiVersion/kind
	namespaced bool
	meta       *objectMeta
}

// objectMeta is what every object's metadata is checked for.
type objectMeta struct {
	Name, Namespace string
	Labels          map[string]string
	Annotations     map[string]string
}

// kinds are the only objects the chart may render: for each, the type it is
// decoded into and whether it lives in a namespace.
var kinds = map[string]struct {
	namespaced bool
	new        func(o *objects) any
}{
	"v1/Namespace":                {false, func(o *objects) any { o.namespace = &corev1.Namespace{}; return o.namespace }},
	"v1/ServiceAccount":           {true, func(o *objects) any { o.serviceAccount = &corev1.ServiceAccount{}; return o.serviceAccount }},
	"v1/ConfigMap":                {true, func(o *objects) any { o.configMap = &corev1.ConfigMap{}; return o.configMap }},
	"v1/Service":                  {true, func(o *objects) any { o.service = &corev1.Service{}; return o.service }},
	"apps/v1/DaemonSet":           {true, func(o *objects) any { o.daemonSet = &appsv1.DaemonSet{}; return o.daemonSet }},
	"storage.k8s.io/v1/CSIDriver": {false, func(o *objects) any { o.csiDriver = &storagev1.CSIDriver{}; return o.csiDriver }},
	"monitoring.coreos.com/v1/ServiceMonitor": {true, func(o *objects) any {
		o.serviceMonitor = &monitoringv1.ServiceMonitor{}
		return o.serviceMonitor
	}},
}

// decode decodes every manifest strictly into its API type: an unknown or
// repeated field, a wrong type, or a kind the chart should not render fails.
func decode(r *rendering) (*objects, error) {
	o := &objects{}
	seen := map[string]bool{}
	for _, m := range r.manifests {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(m.Content), &head); err != nil {
			return nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		gvk := head.APIVersion + "/" + head.Kind
		k, ok := kinds[gvk]
		if !ok {
			return nil, fmt.Errorf("%s: unexpected kind %s", m.Name, gvk)
		}
		if seen[gvk] {
			return nil, fmt.Errorf("%s: a second %s", m.Name, gvk)
		}
		seen[gvk] = true
		typed := k.new(o)
		if err := yaml.UnmarshalStrict([]byte(m.Content), typed); err != nil {
			return nil, fmt.Errorf("%s: strict decode into %T: %w", m.Name, typed, err)
		}
		// The typed object must say back what the text said: its own
		// apiVersion and kind (a TypeMeta that did not decode is empty).
		var back struct {
			APIVersion string      `json:"apiVersion"`
			Kind       string      `json:"kind"`
			Metadata   *objectMeta `json:"metadata"`
		}
		js, err := json.Marshal(typed)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(js, &back); err != nil {
			return nil, err
		}
		if back.APIVersion+"/"+back.Kind != gvk || back.Metadata == nil {
			return nil, fmt.Errorf("%s: decoded as %s/%s", m.Name, back.APIVersion, back.Kind)
		}
		o.all = append(o.all, object{source: m.Name, gvk: gvk, namespaced: k.namespaced, meta: back.Metadata})
	}
	return o, nil
}

// mustDecode renders and decodes or fails the test.
func mustDecode(t testing.TB, vals map[string]any, rel release) (*rendering, *objects) {
	t.Helper()
	r := mustRender(t, vals, rel)
	o, err := decode(r)
	if err != nil {
		t.Fatal(err)
	}
	return r, o
}

// gvks lists the kinds of a decoded rendering in install order.
func (o *objects) gvks() []string {
	var out []string
	for _, x := range o.all {
		out = append(out, x.gvk)
	}
	return out
}

// container finds a container of the pod template by name.
func container(spec *corev1.PodSpec, name string) *corev1.Container {
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == name {
			return &spec.InitContainers[i]
		}
	}
	return nil
}

// volume finds a volume of the pod template by name.
func volume(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

func equal[T any](t testing.TB, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %#v\nwant %#v", what, got, want)
	}
}
