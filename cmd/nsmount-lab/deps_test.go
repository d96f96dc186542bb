package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestNoTestingLinked is a lint: nsmount-lab, and the product side of
// testenv that it is built from, must not link package testing (nor
// testing/...). Helpers that take a *testing.T belong in testenv/labtest,
// which programs do not import.
func TestNoTestingLinked(t *testing.T) {
	goBin, err := exec.LookPath("go") // go test puts GOROOT/bin first in $PATH
	if err != nil {
		t.Fatalf("the go command is needed to list dependencies: %v", err)
	}
	for _, pkg := range []string{
		"github.com/nsmount/nsmount/cmd/nsmount-lab",
		"github.com/nsmount/nsmount/testenv",
		"github.com/nsmount/nsmount/testenv/ctrdenv",
		"github.com/nsmount/nsmount/testenv/ociimage",
	} {
		t.Run(pkg[strings.LastIndex(pkg, "/")+1:], func(t *testing.T) {
			out, err := exec.CommandContext(t.Context(), goBin, "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", pkg).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v: %s", pkg, err, out)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(line)
				if len(f) == 0 {
					continue
				}
				if bad := slices.IndexFunc(f[1:], isTestingPkg); bad >= 0 {
					t.Errorf("%s links %s: %s imports it", pkg, f[1+bad], f[0])
				}
			}
		})
	}
}

// isTestingPkg reports whether p is package testing or one below it.
func isTestingPkg(p string) bool { return p == "testing" || strings.HasPrefix(p, "testing/") }
