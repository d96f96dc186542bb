package csi

import (
	"encoding/json"
	"errors"
	"path"
	"slices"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
)

// FuzzParseVolume: any NodePublishVolume volume (ID, target path, file
// system type, mount flags, readonly, volume context as JSON) either parses
// into a Volume that holds the documented invariants, or fails with a
// one-line invalid argument error.
func FuzzParseVolume(f *testing.F) {
	good, _ := json.Marshal(goodContext())
	f.Add("team-a-data", testTarget, "", "", false, good)
	f.Add("csi-0123", "/tmp/t", "nfs4", "noatime,timeo=600", true, []byte(`{"server":"2001:db8::1","export":"/x","csi.storage.k8s.io/pod.uid":"`+testUID+`","csi.storage.k8s.io/pod.name":"a","csi.storage.k8s.io/pod.namespace":"b","csi.storage.k8s.io/ephemeral":"true"}`))
	f.Add("v", testTarget, "nfs", "", false, []byte(`{"server":"nfs","export":"/x","options":"rw","csi.storage.k8s.io/pod.uid":"00000000-0000-4000-8000-000000000000"}`))
	f.Add("v", "/", "ext4", "a,,b", true, []byte(`{"Server":"x"}`))
	f.Add("", "relative", "", "", false, []byte(`null`))
	f.Fuzz(func(t *testing.T, id, target, fstype, flags string, readonly bool, ctxJSON []byte) {
		var volumeContext map[string]string
		if json.Unmarshal(ctxJSON, &volumeContext) != nil {
			return
		}
		var mountFlags []string
		if flags != "" {
			mountFlags = strings.Split(flags, ";")
		}
		capability := mountCapability(csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, fstype, mountFlags...)
		v, err := ParseVolume(id, target, capability, readonly, volumeContext)
		if err != nil {
			if !errors.Is(err, nsmount.ErrInvalidArgument) || strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error %q: want one line of class invalid argument", err)
			}
			return
		}
		switch {
		case v.ID == "" || len(v.ID) > MaxVolumeIDLen:
			t.Fatalf("volume ID %q accepted", v.ID)
		case !strings.HasPrefix(v.TargetPath, "/") || path.Clean(v.TargetPath) != v.TargetPath || v.TargetPath == "/":
			t.Fatalf("target path %q accepted", v.TargetPath)
		case v.FSType != "nfs" && v.FSType != "nfs4":
			t.Fatalf("fs type %q accepted", v.FSType)
		case !validUID(v.Pod.UID) || !admission.ValidNamespace(v.Pod.Namespace) || !validSubdomain(v.Pod.Name):
			t.Fatalf("pod %+v accepted", v.Pod)
		case readonly && !slices.Contains(v.Options, nsmount.Option{Key: "ro"}):
			t.Fatalf("read-only volume without ro: %s", v.Options)
		}
		if other, ok := kubeletPodUID(v.TargetPath); ok && other != v.Pod.UID {
			t.Fatalf("target path of pod %s accepted for pod %s", other, v.Pod.UID)
		}
		for k := range volumeContext {
			if !contextKeys[k] {
				t.Fatalf("unknown key %q accepted", k)
			}
		}
		// What a record stores reads back to the same volume.
		src, err := nsmount.ParseSource(v.Source.String())
		if err != nil || src != v.Source {
			t.Fatalf("source %q reads back as %+v, %v", v.Source, src, err)
		}
		opts, err := nsmount.ParseOptions(v.Options.String())
		if err != nil || opts.String() != v.Options.String() {
			t.Fatalf("options %q read back as %q, %v", v.Options, opts, err)
		}
		if err := nsmount.ValidateMount(v.FSType, v.Source, v.Options); err != nil {
			t.Fatalf("accepted volume does not validate: %v", err)
		}
	})
}
