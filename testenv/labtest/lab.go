package labtest

// Labs for tests: one shared Lab per test binary and kernel, and scenario
// runs whose LAB-CHECK lines become subtests.

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsmount/nsmount/testenv"
)

// sharedLab is a lab shared by the tests of this test binary, created on
// first use.
type sharedLab struct {
	once sync.Once
	lab  *testenv.Lab
	err  error
}

// shared holds this test binary's labs by kernel metapackage ("" for the
// default Config).
var shared struct {
	mu   sync.Mutex
	labs map[string]*sharedLab
}

// Shared returns the lab shared by all tests of this test binary, creating
// it on first use with the default testenv.Config (environment variables
// apply).
// If the lab cannot be created the test fails with the reason, unless
// NSMOUNT_LAB=off, in which case it is skipped with a message saying so.
// The lab's temporary files live until the process exits.
func Shared(t testing.TB) *testenv.Lab { return SharedKernel(t, "") }

// SharedKernel is Shared for the kernel that metapackage pkg names (e.g.
// testenv.NewerKernelPackage); "" is the default kernel.
func SharedKernel(t testing.TB, pkg string) *testenv.Lab {
	t.Helper()
	if os.Getenv(testenv.EnvLab) == "off" {
		t.Skip("lab disabled by NSMOUNT_LAB=off")
	}
	shared.mu.Lock()
	if shared.labs == nil {
		shared.labs = map[string]*sharedLab{}
	}
	s := shared.labs[pkg]
	if s == nil {
		s = &sharedLab{}
		shared.labs[pkg] = s
	}
	shared.mu.Unlock()
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		start := time.Now()
		s.lab, s.err = testenv.New(ctx, testenv.Config{KernelPackage: pkg, Log: testLogWriter{t}})
		if s.err == nil {
			t.Logf("lab ready in %v (kernel %s)", time.Since(start).Round(time.Millisecond), s.lab.KernelVersion())
		}
	})
	if s.err != nil {
		t.Fatalf("nested-VM lab cannot start (set NSMOUNT_LAB=off to skip lab tests): %v", s.err)
	}
	return s.lab
}

// testLogWriter logs writes to t.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// RunT runs script in a fresh VM of the shared lab and logs the console
// (and any wait for a VM slot).
// Each LAB-CHECK line becomes a subtest of t that fails with the check's
// detail. The test fails if the lab fails, the script exits non-zero or
// prints no checks.
func RunT(t *testing.T, script string, opts ...testenv.RunOption) *testenv.Result {
	t.Helper()
	return RunOnT(t, Shared(t), script, opts...)
}

// RunOnT is RunT in lab (e.g. SharedKernel's).
func RunOnT(t *testing.T, lab *testenv.Lab, script string, opts ...testenv.RunOption) *testenv.Result {
	t.Helper()
	ctx := t.Context()
	res, err := lab.Run(ctx, script, t.Output(), append([]testenv.RunOption{testenv.WithLog(t.Output())}, opts...)...)
	if err != nil {
		t.Fatalf("lab run: %v", err)
	}
	t.Logf("lab run took %v, script exit status %d", res.Duration.Round(time.Millisecond), res.ExitCode)
	checks := res.Checks()
	for _, c := range checks {
		t.Run(c.Name, func(t *testing.T) {
			if !c.Passed {
				t.Error(c.Detail)
			}
		})
	}
	if res.ExitCode != 0 {
		t.Errorf("lab script exited with status %d", res.ExitCode)
	}
	if len(checks) == 0 {
		t.Error("lab script printed no LAB-CHECK lines")
	}
	return res
}
