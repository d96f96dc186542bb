package ocihook_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/registry"
	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/ocihook"
)

// TestRunTouchesNothing: a container without the annotation needs no
// policy file, no bundle, no registry: the hook touches nothing. Nor does
// poststop where nsmount never mounted anything.
func TestRunTouchesNothing(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	c := ocihook.Config{Policy: "/nonexistent/policy.json", StateDir: state, Owner: cachectl.OwnerHook}
	for _, tc := range []struct {
		stage ocihook.Stage
		state specs.State
	}{
		{ocihook.CreateRuntime, specs.State{ID: "c1", Pid: 1, Bundle: "/nonexistent", Annotations: map[string]string{"other": "x"}}},
		{ocihook.CreateRuntime, specs.State{ID: "c1", Pid: 1, Bundle: "/nonexistent", Annotations: map[string]string{"nsmount.io/mounts": "[]"}}},
		{ocihook.Poststop, specs.State{ID: "c1", Bundle: "/nonexistent"}},
	} {
		res, err := ocihook.Run(t.Context(), &tc.state, tc.stage, c)
		if err != nil || len(res.Events) != 0 || res.Teardown != nil || len(res.Mounted) != 0 || res.Container != "c1" || res.Stage != tc.stage {
			t.Errorf("%s %+v: %+v, %v; want nothing done", tc.stage, tc.state, res, err)
		}
		if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: state dir made: %v", tc.stage, err)
		}
	}
	for _, tc := range []struct {
		stage ocihook.Stage
		owner string
		want  string
	}{
		{ocihook.CreateRuntime, cachectl.OwnerCLI, `owner "cli": want hook or nri`},
		{"prestart", cachectl.OwnerHook, `stage "prestart": want createRuntime or poststop`},
	} {
		_, err := ocihook.Run(t.Context(), &specs.State{ID: "c1", Pid: 1}, tc.stage, ocihook.Config{StateDir: state, Owner: tc.owner})
		if !errors.Is(err, nsmount.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%s, owner %s) = %v; want invalid argument %q", tc.stage, tc.owner, err, tc.want)
		}
	}
	_, err := ocihook.Run(t.Context(), &specs.State{ID: "c1", Annotations: map[string]string{"nsmount.io/mounts": "[]"}}, ocihook.CreateRuntime, c)
	if !errors.Is(err, nsmount.ErrInvalidArgument) || err.Error() != "container c1: OCI state has no pid" {
		t.Errorf("createRuntime without a pid: %v", err)
	}
}

// TestPoststopForgets: poststop hands the container to the Manager's
// teardown, which forgets its entries whose mount namespace is gone, and
// only its.
func TestPoststopForgets(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	reg, err := registry.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	gone := nsmount.NSID{Dev: 4, Ino: 1} // no process is in it
	entry := func(id, container string) registry.Entry {
		return registry.Entry{
			ID: id, Target: registry.Identity{NetNS: gone, MountNS: gone, Container: container},
			Mountpoint: "/data", Source: "192.0.2.1:/export", Server: "192.0.2.1", Address: "192.0.2.1",
			FSType: "nfs", Owner: cachectl.OwnerHook, Created: time.Now().Add(-time.Hour),
		}
	}
	if err := reg.Update(func(s *registry.State) error {
		s.Put(entry("1:10", "nsmH-p"))
		s.Put(entry("1:11", "nsmH-other"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c := ocihook.Config{StateDir: state, Owner: cachectl.OwnerNRI}
	res, err := ocihook.Run(t.Context(), &specs.State{ID: "nsmH-p", Status: specs.StateStopped}, ocihook.Poststop, c)
	if err != nil || res.Teardown == nil {
		t.Fatalf("poststop: %+v, %v", res, err)
	}
	if len(res.Teardown.Forgotten) != 1 || res.Teardown.Forgotten[0].Entry.ID != "1:10" {
		t.Errorf("forgotten %+v; want the container's entry only", res.Teardown.Forgotten)
	}
	if len(res.Events) == 0 || !strings.HasPrefix(res.Events[0], "forgot 192.0.2.1:/export at /data: ") {
		t.Errorf("events %q; want the entry forgotten", res.Events)
	}
	for _, e := range res.Events {
		if strings.HasPrefix(e, "warning:") || strings.Contains(e, "\n") {
			t.Errorf("event %q", e)
		}
	}
	again, err := ocihook.Run(t.Context(), &specs.State{ID: "nsmH-p", Status: specs.StateStopped}, ocihook.Poststop, c)
	if err != nil || len(again.Teardown.Forgotten) != 0 {
		t.Errorf("poststop again: %+v, %v; want nothing to do", again.Teardown, err)
	}
}
