package deploy

import (
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
)

// TestLint runs `helm lint --strict`'s rules: no warning and no error, with
// the default values and with everything optional turned on.
func TestLint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for name, vals := range map[string]map[string]any{
		"defaults": values(t, ""),
		"all on":   values(t, "", "set:namespace.create=true", "set:metrics.serviceMonitor.enabled=true"),
		"csi off":  values(t, "", "set:csi.enabled=false"),
	} {
		t.Run(name, func(t *testing.T) {
			l := lint.AllWithKubeVersion(chartDir, vals, defaultRelease.namespace, kv)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("%s", m.Error())
				} else {
					t.Logf("%s", m.Error())
				}
			}
		})
	}
}
