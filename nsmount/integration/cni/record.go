package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/nsmount/nsmount/nsmount"
)

// Record is what the plugin records at ADD about one network attachment:
// the namespace and how it reaches the configured servers. It is kept in a
// JSON file under StateDir/cni until DEL, which reads it back to flush the
// NFS client state of those servers once the namespace is gone.
type Record struct {
	// ContainerID is CNI_CONTAINERID: the runtime's key for the
	// attachment (for a CRI runtime, the pod sandbox ID). It is NOT the
	// containerd container ID of any process in the namespace.
	ContainerID string `json:"cni_container_id"`
	// IfName is CNI_IFNAME, the interface the attachment made.
	IfName string `json:"ifname"`
	// Network is the CNI network name.
	Network string `json:"network"`
	// NetNSPath is CNI_NETNS and NetNS the inode of that namespace.
	NetNSPath string `json:"netns_path"`
	NetNS     uint64 `json:"netns"`
	// Time is when the record was made.
	Time time.Time `json:"time"`
	// Servers are the configured servers as seen from the namespace.
	Servers []ServerCheck `json:"servers"`
}

// MaxRecordSize bounds a record file read back.
const MaxRecordSize = 4 << 20

// RecordPath returns the file of the record for (containerID, ifName)
// under stateDir: stateDir/cni/HASH.json, where HASH is the SHA-256 of both
// (the IDs come from the runtime and are never used as file names).
func RecordPath(stateDir, containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return filepath.Join(stateDir, "cni", hex.EncodeToString(sum[:])+".json")
}

// WriteRecord writes rec to its file under stateDir, atomically: a
// temporary file in the same directory, synced, then renamed over the
// record. The directory is created (0700) if missing.
func WriteRecord(stateDir string, rec *Record) (retErr error) {
	path := RecordPath(stateDir, rec.ContainerID, rec.IfName)
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record: %w", err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	defer func() {
		if retErr != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

// ReadRecord reads the record of (containerID, ifName). Without one the
// error wraps os.ErrNotExist and nsmount.ErrTargetNotFound. A file larger
// than MaxRecordSize, one that does not decode, or one that names another
// attachment is an error.
func ReadRecord(stateDir, containerID, ifName string) (*Record, error) {
	path := RecordPath(stateDir, containerID, ifName)
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("no record of container %s interface %s: %w", containerID, ifName, err))
		}
		return nil, fmt.Errorf("read record: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxRecordSize+1))
	if err != nil {
		return nil, fmt.Errorf("read record: %w", err)
	}
	rec, err := ParseRecord(data, containerID, ifName)
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", path, err)
	}
	return rec, nil
}

// ParseRecord decodes a record file's content and checks that it is the
// record of (containerID, ifName). Unknown fields are ignored (a record
// written by a newer nsmount still names its servers).
func ParseRecord(data []byte, containerID, ifName string) (*Record, error) {
	if len(data) > MaxRecordSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxRecordSize)
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if rec.ContainerID != containerID || rec.IfName != ifName {
		return nil, fmt.Errorf("it is for container %q interface %q", rec.ContainerID, rec.IfName)
	}
	return &rec, nil
}

// RemoveRecord removes the record of (containerID, ifName). A missing
// record is not an error.
func RemoveRecord(stateDir, containerID, ifName string) error {
	err := os.Remove(RecordPath(stateDir, containerID, ifName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove record: %w", err)
	}
	return nil
}
