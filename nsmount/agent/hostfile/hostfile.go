// Package hostfile puts on the host the files that runc's OCI hooks read
// there: the nsmount binary they run (Install) and the host policy they
// check (MirrorPolicy). Each file is written whole under a temporary name
// and renamed over the old one, so that a hook starting meanwhile reads the
// old file or the new one, never a part of either.
package hostfile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/nsmount/admission"
)

// BinaryName is the name Install gives the binary in its directory.
const BinaryName = "nsmount"

// Modes of the files written.
const (
	BinaryMode = 0o755
	PolicyMode = 0o644
)

// Installed is what Install did.
type Installed struct {
	// Path is the installed binary.
	Path string `json:"path"`
	// Size and Digest ("sha256:HEX") are its size and content's.
	Size   int64  `json:"size"`
	Digest string `json:"digest"`
	// Changed is false when Path held the same bytes, mode and owner
	// already: nothing was written.
	Changed bool `json:"changed"`
}

// Install copies the executable at src (/proc/self/exe: the running
// binary) to dir/BinaryName, mode 0755, owned by root when run as root,
// creating dir if needed.
func Install(src, dir string) (*Installed, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return nil, fmt.Errorf("install: read %s: %w", src, err)
	}
	dst := filepath.Join(dir, BinaryName)
	res := &Installed{Path: dst, Size: int64(len(data)), Digest: digest(data)}
	if same(dst, data, BinaryMode) {
		return res, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	if err := writeAtomic(dst, data, BinaryMode); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	res.Changed = true
	return res, nil
}

// Mirrored is what MirrorPolicy did.
type Mirrored struct {
	// Digest is the digest ("sha256:HEX") of the policy now at the
	// destination; "" when there is none.
	Digest string `json:"digest,omitempty"`
	// Changed says the destination was written, or removed.
	Changed bool `json:"changed"`
}

// MirrorPolicy copies the host policy file at src to dst, mode 0644, owned
// by root when run as root, if src is a policy that loads
// (admission.ReadPolicy: the same checks as for the hooks' own reading)
// and dst does not hold it already. A policy that does not load is an
// error and leaves dst as it is: the last good policy stays in force. A
// missing src removes dst, so that the hooks deny every mount, as they do
// without a policy (admission.LoadOrDeny).
func MirrorPolicy(src, dst string) (*Mirrored, error) {
	_, data, err := admission.ReadPolicy(src)
	if errors.Is(err, fs.ErrNotExist) {
		err := os.Remove(dst)
		switch {
		case err == nil:
			return &Mirrored{Changed: true}, nil
		case errors.Is(err, fs.ErrNotExist):
			return &Mirrored{}, nil
		}
		return nil, fmt.Errorf("mirror policy: %s is gone: %w", src, err)
	}
	if err != nil {
		return nil, fmt.Errorf("mirror policy to %s: kept the last good one: %w", dst, err)
	}
	res := &Mirrored{Digest: digest(data)}
	if same(dst, data, PolicyMode) {
		return res, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return nil, fmt.Errorf("mirror policy: %w", err)
	}
	if err := writeAtomic(dst, data, PolicyMode); err != nil {
		return nil, fmt.Errorf("mirror policy: %w", err)
	}
	res.Changed = true
	return res, nil
}

// same reports whether path is a regular file holding data, with mode
// (and owned by root when we are root).
func same(path string, data []byte, mode os.FileMode) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG ||
		os.FileMode(st.Mode&0o7777) != mode || st.Size != int64(len(data)) || os.Geteuid() == 0 && (st.Uid != 0 || st.Gid != 0) {
		return false
	}
	have, err := io.ReadAll(io.LimitReader(f, int64(len(data))+1))
	return err == nil && bytes.Equal(have, data)
}

// writeAtomic writes data to a new file next to path and renames it over
// path, with mode whatever the umask, owned by root when we are root;
// the file and the directory entry are synced before it returns.
func writeAtomic(path string, data []byte, mode os.FileMode) (retErr error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".new-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if retErr != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if err := f.Chown(0, 0); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}
