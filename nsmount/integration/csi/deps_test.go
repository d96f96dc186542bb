package csi

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestHeavyDependenciesStayHere is a lint: the CSI spec's bindings (and
// with them gRPC) are linked only by this package, the node agent that
// serves it (nsmount/agent) and the commands; the
// mount core and the packages the mount helper runs link neither gRPC nor
// protobuf; no program links csi-test or ginkgo (test dependencies).
func TestHeavyDependenciesStayHere(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	const module = "github.com/nsmount/nsmount/"
	out, err := exec.CommandContext(t.Context(), goBin, "list", "-deps", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", module+"...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v: %s", err, out)
	}
	mayLinkCSI := func(p string) bool {
		return strings.HasPrefix(p, module+"nsmount/integration/csi") || p == module+"nsmount/agent" || strings.HasPrefix(p, module+"cmd/")
	}
	// The mount core, the registry and kernel observation, routing: what
	// every mount and the helper (this binary re-executed) run.
	core := []string{
		"nsmount", "nsmount/admission", "nsmount/netsysfs", "nsmount/internal/jsonkeys",
		"cachectl", "cachectl/kernel", "cachectl/registry", "routing", "routing/resolver",
	}
	heavy := func(dep string) bool {
		return strings.HasPrefix(dep, "google.golang.org/grpc") || strings.HasPrefix(dep, "google.golang.org/protobuf") ||
			strings.HasPrefix(dep, "github.com/container-storage-interface/spec")
	}
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], module) {
			continue
		}
		pkg, deps := f[0], f[1:]
		for _, d := range deps {
			switch {
			case strings.HasPrefix(d, "github.com/container-storage-interface/spec") && !mayLinkCSI(pkg):
				t.Errorf("%s links the CSI spec (%s): only nsmount/integration/csi, nsmount/agent and the commands may", pkg, d)
			case strings.HasPrefix(d, "github.com/kubernetes-csi/csi-test") || strings.HasPrefix(d, "github.com/onsi/"):
				t.Errorf("%s links %s, a test dependency", pkg, d)
			}
		}
		if pkg == module+"nsmount/integration/csi" && !slices.ContainsFunc(deps, heavy) {
			t.Errorf("%s links no gRPC: this lint reads go list wrong", pkg)
		}
		if slices.Contains(core, strings.TrimPrefix(pkg, module)) {
			seen++
			if i := slices.IndexFunc(deps, heavy); i >= 0 {
				t.Errorf("%s (mount core) links %s", pkg, deps[i])
			}
		}
	}
	if seen != len(core) {
		t.Errorf("found %d of the %d core packages in go list's output: update the list", seen, len(core))
	}
}
