package ctrdenv

// Images: the busybox image (and CRI's pause stand-in) imported from an
// OCI layout that package ociimage writes, without a registry.

import (
	"bytes"
	"context"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/nsmount/nsmount/testenv/ociimage"
)

// CRINamespace is the containerd namespace of CRI's pods and containers.
const CRINamespace = "k8s.io"

// PauseImageName is the pod sandbox image of a CRI-enabled Containerd:
// busybox running "sleep infinity".
const PauseImageName = "nsmount.test/pause:latest"

// BusyboxImageName is the name under which BusyboxImage imports the image.
const BusyboxImageName = "nsmount.test/busybox:latest"

// BusyboxImage returns the busybox image, built from cfg.Busybox and
// imported (no registry) and unpacked on first use.
func (c *Containerd) BusyboxImage(ctx context.Context) (containerd.Image, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.image != nil {
		return c.image, nil
	}
	var buf bytes.Buffer
	if err := ociimage.WriteBusyboxImage(&buf, c.cfg.Busybox, BusyboxImageName); err != nil {
		return nil, err
	}
	imgs, err := c.client.Import(ctx, &buf)
	if err != nil {
		return nil, fmt.Errorf("import busybox image: %w", err)
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("import busybox image: got %d images, want 1", len(imgs))
	}
	img := containerd.NewImage(c.client, imgs[0])
	if err := img.Unpack(ctx, c.cfg.Snapshotter); err != nil {
		return nil, fmt.Errorf("unpack busybox image with %s: %w", c.cfg.Snapshotter, err)
	}
	c.image = img
	return img, nil
}

// importCRIImages imports the pause stand-in and the busybox image into
// the CRI namespace and unpacks them.
func (c *Containerd) importCRIImages(ctx context.Context) error {
	return ImportCRIImages(ctx, c.client, c.cfg.Busybox, c.cfg.Snapshotter)
}

// ImportCRIImages imports, through client, the images that CRI pods need
// into the CRI namespace, and unpacks them with snapshotter: PauseImageName
// (busybox running "sleep infinity", the sandbox image) and
// BusyboxImageName, both built from the static busybox.
func ImportCRIImages(ctx context.Context, client *containerd.Client, busybox, snapshotter string) error {
	ctx = namespaces.WithNamespace(ctx, CRINamespace)
	for _, im := range []struct {
		name string
		cmd  []string
	}{{PauseImageName, []string{"sleep", "infinity"}}, {BusyboxImageName, []string{"sh"}}} {
		var buf bytes.Buffer
		if err := ociimage.WriteBusyboxImageCmd(&buf, busybox, im.name, im.cmd); err != nil {
			return err
		}
		imgs, err := client.Import(ctx, &buf)
		if err != nil {
			return fmt.Errorf("import %s: %w", im.name, err)
		}
		if len(imgs) != 1 {
			return fmt.Errorf("import %s: got %d images, want 1", im.name, len(imgs))
		}
		if err := containerd.NewImage(client, imgs[0]).Unpack(ctx, snapshotter); err != nil {
			return fmt.Errorf("unpack %s with %s: %w", im.name, snapshotter, err)
		}
	}
	return nil
}
