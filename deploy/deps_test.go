package deploy

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// goTool is the go command that runs this test.
func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := exec.LookPath(p); err != nil {
		t.Fatalf("no go command: %v", err)
	}
	return p
}

// A pkg is one package of `go list -deps`.
type pkg struct {
	path, module string
	imports      []string
}

// listDeps lists the packages the given packages link (tests excluded).
func listDeps(t *testing.T, patterns ...string) map[string]pkg {
	t.Helper()
	args := append([]string{"list", "-e", "-deps", "-f", `{{.ImportPath}}|{{with .Module}}{{.Path}}{{end}}|{{join .Imports " "}}`}, patterns...)
	cmd := exec.Command(goTool(t), args...)
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
	pkgs := map[string]pkg{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "|", 3)
		if len(f) != 3 {
			t.Fatalf("go list: %q", line)
		}
		pkgs[f[0]] = pkg{path: f[0], module: f[1], imports: strings.Fields(f[2])}
	}
	return pkgs
}

// importChain is how root comes to import target: root, ..., target.
func importChain(pkgs map[string]pkg, root, target string) []string {
	prev := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == target {
			var chain []string
			for ; p != ""; p = prev[p] {
				chain = append(chain, p)
			}
			slices.Reverse(chain)
			return chain
		}
		for _, i := range pkgs[p].imports {
			if _, seen := prev[i]; !seen {
				prev[i] = p
				queue = append(queue, i)
			}
		}
	}
	return nil
}

// TestProductDeps: Helm and the Kubernetes modules are these tests' only:
// the nsmount binary links no helm.sh, k8s.io or sigs.k8s.io module, and no
// package of the module (tests aside) links any module that only these tests
// need.
func TestProductDeps(t *testing.T) {
	const binary = "github.com/nsmount/nsmount/cmd/nsmount"
	pkgs := listDeps(t, "./cmd/nsmount")
	if _, ok := pkgs[binary]; !ok {
		t.Fatalf("go list found no %s", binary)
	}
	reported := map[string]bool{}
	for _, path := range keys(pkgs) {
		p := pkgs[path]
		for _, prefix := range []string{"helm.sh/", "k8s.io/", "sigs.k8s.io/"} {
			if strings.HasPrefix(p.module, prefix) && !reported[p.module] {
				reported[p.module] = true
				t.Errorf("the nsmount binary links module %s: %s", p.module, strings.Join(importChain(pkgs, binary, p.path), " -> "))
			}
		}
	}

	testOnly := []string{
		"helm.sh/helm/v3", "k8s.io/pod-security-admission", "k8s.io/client-go",
		"github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring",
	}
	all := listDeps(t, "./...")
	var roots []string
	for _, path := range keys(all) {
		if all[path].module == "github.com/nsmount/nsmount" {
			roots = append(roots, path)
		}
	}
	reported = map[string]bool{}
	for _, path := range keys(all) {
		p := all[path]
		if !slices.Contains(testOnly, p.module) || reported[p.module] {
			continue
		}
		for _, root := range roots {
			if chain := importChain(all, root, p.path); chain != nil {
				reported[p.module] = true
				t.Errorf("module %s is linked outside tests: %s", p.module, strings.Join(chain, " -> "))
				break
			}
		}
	}
}
