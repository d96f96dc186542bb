package csi_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"
	"google.golang.org/grpc"

	"github.com/nsmount/nsmount/nsmount/integration/csi"
)

// The sanity volume: what a PersistentVolume's attributes and kubelet's
// pod information give NodePublishVolume.
var sanityContext = map[string]string{
	csi.KeyServer: "192.0.2.10", csi.KeyExport: "/export", csi.KeyOptions: "vers=4.2",
	csi.KeyPodUID: "5b1d3f0e-6a7c-4d2b-9e8f-1a2b3c4d5e6f", csi.KeyPodName: "sanity", csi.KeyPodNamespace: "sanity",
}

const sanityPolicy = `{"version": 1, "allow": [{"name": "sanity", "servers": ["192.0.2.10"], "networks": ["192.0.2.0/24"],
  "exports": ["/export"], "options": ["vers"], "csi": {"namespaces": ["sanity"]}}]}`

// sanitySkips are the sanity specs skipped by name, and why. Everything
// else runs; specs that skip themselves (for a capability the driver does
// not have) are listed in sanitySelfSkips.
var sanitySkips = map[string]string{
	"Controller Service [Controller Server]":                         "no controller service",
	"ListSnapshots [Controller Server]":                              "no controller service",
	"GetSnapshot [Controller Server]":                                "no controller service",
	"DeleteSnapshot [Controller Server]":                             "no controller service",
	"CreateSnapshot [Controller Server]":                             "no controller service",
	"ExpandVolume [Controller Server]":                               "no controller service",
	"ModifyVolume [Controller Server]":                               "no controller service",
	"ControllerGetVolumeHealth [Controller Server]":                  "no controller service",
	"ControllerListVolumeHealth [Controller Server]":                 "no controller service",
	"GroupController Service [GroupController Server]":               "no group controller service",
	"GroupController Service [GroupController VolumeGroupSnapshots]": "no group controller service",
}

// sanitySelfSkips are the specs that skip themselves here: the driver has
// no staging, no expansion, no SINGLE_NODE_MULTI_WRITER, no storage health,
// and no controller service (which "should work" and "should be
// idempotent" need to provision).
var sanitySelfSkips = []string{
	"Node Service NodePublishVolume with single node multi writer capability should fail when volume with single node single writer access mode is already mounted at a different target path",
	"Node Service NodeStageVolume should fail when no volume id is provided",
	"Node Service NodeStageVolume should fail when no staging target path is provided",
	"Node Service NodeStageVolume should fail when no volume capability is provided",
	"Node Service NodeUnstageVolume should fail when no volume id is provided",
	"Node Service NodeUnstageVolume should fail when no staging target path is provided",
	"Node Service NodeExpandVolume should fail when no volume id is provided",
	"Node Service NodeExpandVolume should fail when no volume path is provided",
	"Node Service NodeExpandVolume should fail when volume is not found",
	"Node Service NodeExpandVolume should work if node-expand is called after node-publish",
	"Node Service NodeGetStorageHealth should return appropriate response",
	"Node Service should work",
	"Node Service should be idempotent",
}

// volumeFactory stands in for whoever writes the PersistentVolume: the
// node specs that need a volume to publish get one from its CreateVolume
// (on ControllerAddress), with sanityContext as its attributes. It is not
// the driver's (nfs.nsmount.io has no controller service: the export
// exists on the server), and the controller specs are skipped.
type volumeFactory struct {
	csipb.UnimplementedControllerServer
	mu      sync.Mutex
	created map[string]bool
}

func (f *volumeFactory) CreateVolume(_ context.Context, req *csipb.CreateVolumeRequest) (*csipb.CreateVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created[req.GetName()] = true
	return &csipb.CreateVolumeResponse{Volume: &csipb.Volume{
		VolumeId: "pv-" + req.GetName(), CapacityBytes: req.GetCapacityRange().GetRequiredBytes(), VolumeContext: sanityContext,
	}}, nil
}

func (f *volumeFactory) DeleteVolume(context.Context, *csipb.DeleteVolumeRequest) (*csipb.DeleteVolumeResponse, error) {
	return &csipb.DeleteVolumeResponse{}, nil
}

func (f *volumeFactory) ControllerGetCapabilities(context.Context, *csipb.ControllerGetCapabilitiesRequest) (*csipb.ControllerGetCapabilitiesResponse, error) {
	return &csipb.ControllerGetCapabilitiesResponse{Capabilities: []*csipb.ControllerServiceCapability{{
		Type: &csipb.ControllerServiceCapability_Rpc{Rpc: &csipb.ControllerServiceCapability_RPC{Type: csipb.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME}},
	}}}, nil
}

// TestSanity runs csi-sanity (github.com/kubernetes-csi/csi-test/v5)
// against the node service on a unix socket, with no pod sandbox: every
// published volume stays pending (the host kernel has no NFS), so sanity
// checks validation, idempotency, the target path's life, stats and
// health of a volume whose mount is deferred, never a mount.
func TestSanity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the service makes target directories in the host mount namespace")
	}
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policy, []byte(sanityPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	svc, err := csi.New(csi.Config{
		NodeID: "sanity-node", Policy: policy, StateDir: filepath.Join(dir, "state"), MountNS: "/proc/self/ns/mnt",
		TargetRoot: dir, NoDiscovery: true, StatsTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lis, err := csi.Listen("unix://" + filepath.Join(dir, "csi.sock"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- svc.Serve(ctx, lis) }()

	factory := &volumeFactory{created: map[string]bool{}}
	flis, err := csi.Listen("unix://" + filepath.Join(dir, "factory.sock"))
	if err != nil {
		t.Fatal(err)
	}
	fsrv := grpc.NewServer()
	csipb.RegisterControllerServer(fsrv, factory)
	// Sanity asks the controller's endpoint who it is too: the driver.
	csipb.RegisterIdentityServer(fsrv, svc)
	go fsrv.Serve(flis)
	defer fsrv.Stop()

	config := sanity.NewTestConfig()
	config.Address = "unix://" + filepath.Join(dir, "csi.sock")
	config.ControllerAddress = "unix://" + filepath.Join(dir, "factory.sock")
	config.TargetPath = filepath.Join(dir, "csi-mount")
	config.StagingPath = filepath.Join(dir, "csi-staging")
	config.IdempotentCount = 3
	sc := sanity.GinkgoTest(&config)
	defer sc.Finalize()

	var report types.Report
	ginkgo.ReportAfterSuite("nsmount", func(r ginkgo.Report) { report = r })
	gomega.RegisterFailHandler(ginkgo.Fail)
	suite, reporter := ginkgo.GinkgoConfiguration()
	for name := range sanitySkips {
		// Matched against the suite's description, a space and the
		// spec's full text.
		suite.SkipStrings = append(suite.SkipStrings, " "+regexp.QuoteMeta(name)+" ")
	}
	reporter.Succinct = true
	reporter.NoColor = true
	ok := ginkgo.RunSpecs(t, "csi-sanity against nfs.nsmount.io", suite, reporter)

	var passed, skippedByName, skippedSelf []string
	for _, s := range report.SpecReports {
		if s.LeafNodeType != types.NodeTypeIt {
			continue
		}
		name := s.FullText()
		switch {
		case s.State == types.SpecStatePassed:
			passed = append(passed, name)
		case s.State == types.SpecStateSkipped && slices.Contains(sanitySelfSkips, name):
			skippedSelf = append(skippedSelf, name)
		case (s.State == types.SpecStateSkipped || s.State == types.SpecStatePending) && skippedByNameOf(name):
			skippedByName = append(skippedByName, name)
		case s.State == types.SpecStateSkipped:
			t.Errorf("skipped, but not listed as skipped: %s (%s)", name, s.Failure.Message)
		default:
			t.Errorf("%s: %s", s.State, name)
		}
	}
	for _, name := range sanitySelfSkips {
		if !slices.Contains(skippedSelf, name) {
			t.Errorf("listed as skipping itself, but did not: %s", name)
		}
	}
	slices.Sort(passed)
	t.Logf("csi-sanity: %d specs: %d passed, %d skipped by name (controller and group controller specs), %d skipped themselves (capabilities the driver does not have):\n  passed: %s\n  skipped themselves: %s",
		len(report.SpecReports.WithLeafNodeType(types.NodeTypeIt)), len(passed), len(skippedByName), len(skippedSelf),
		strings.Join(passed, "\n          "), strings.Join(skippedSelf, "\n          "))
	if !ok {
		t.Error("csi-sanity failed")
	}
	if len(passed) == 0 {
		t.Error("no sanity spec passed")
	}
	if len(factory.created) == 0 {
		t.Error("no spec published a volume: the volume factory was not used")
	}
	// What sanity published it unpublished: no record is left.
	if ents, _ := os.ReadDir(filepath.Join(dir, "state", "csi")); len(ents) != 0 {
		t.Errorf("%d records left after sanity", len(ents))
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// skippedByNameOf reports whether spec name is under a container skipped
// by name.
func skippedByNameOf(name string) bool {
	for s := range sanitySkips {
		if strings.HasPrefix(name, s+" ") {
			return true
		}
	}
	return false
}
