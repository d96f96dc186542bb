package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// imageName is the name the tests give the image.
const imageName = "nsmount.test/busybox:latest"

// TestWriteBusyboxImage checks the layout that containerd imports: the
// index names the image, every blob is where its digest says, and the layer
// has busybox and its applets.
func TestWriteBusyboxImage(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox-static is needed (testenv/install-deps.sh): %v", err)
	}
	var a, b bytes.Buffer
	if err := WriteBusyboxImage(&a, busybox, imageName); err != nil {
		t.Fatal(err)
	}
	if err := WriteBusyboxImage(&b, busybox, imageName); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two builds of the image differ")
	}
	files := map[string][]byte{}
	tr := tar.NewReader(&a)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		files[h.Name] = data
	}
	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if len(index.Manifests) != 1 || index.Manifests[0].Annotations["io.containerd.image.name"] != imageName {
		t.Fatalf("index.json manifests = %+v", index.Manifests)
	}
	blob := func(d string) []byte {
		data, ok := files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")]
		if !ok {
			t.Fatalf("blob %s missing", d)
		}
		return data
	}
	var manifest struct {
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v, %d layers", err, len(manifest.Layers))
	}
	layer := tar.NewReader(bytes.NewReader(blob(manifest.Layers[0].Digest)))
	links := map[string]string{}
	for {
		h, err := layer.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		links[h.Name] = h.Linkname
	}
	for _, want := range []string{"bin/busybox", "bin/sh", "bin/sleep", "tmp/", "proc/"} {
		if _, ok := links[want]; !ok {
			t.Errorf("layer has no %s", want)
		}
	}
	if links["bin/sh"] != "busybox" {
		t.Errorf("bin/sh -> %q, want busybox", links["bin/sh"])
	}
}
