package csi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/admission"
)

// States of a published volume.
const (
	// StatePending: published, waiting for the pod's network namespace.
	StatePending = "pending"
	// StateMounted: mounted from the pod's network namespace.
	StateMounted = "mounted"
	// StateFailed: the last mount attempt failed (LastError); the next
	// sandbox event or NodePublishVolume retry tries again.
	StateFailed = "failed"
)

// recordVersion is the record file format.
const recordVersion = 1

// maxRecordSize bounds a record file.
const maxRecordSize = 64 << 10

// Record is what NodePublishVolume recorded for one target path, durably
// (one file per target path under the state directory): the volume as
// kubelet asked for it, the policy's admission, and where its mount
// stands. It survives a restart of the service: the mount is made, or
// redone, from it when the pod's sandbox is ready.
type Record struct {
	Version int `json:"version"`
	// Volume is the published volume; Source and Options are its source
	// and options in text form.
	Volume  Volume `json:"volume"`
	Source  string `json:"source"`
	Options string `json:"options,omitempty"`
	// Admission is the policy's decision at NodePublishVolume (the
	// policy is asked again when the mount is made).
	Admission *admission.Admission `json:"admission"`
	// Published is when NodePublishVolume first recorded the volume.
	Published time.Time `json:"published"`
	// State is StatePending, StateMounted or StateFailed.
	State string `json:"state"`
	// Mount is the mount, once made.
	Mount *MountState `json:"mount,omitempty"`
	// LastError, LastAttempt and Attempts describe the mount attempts.
	LastError   string    `json:"last_error,omitempty"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	Attempts    int       `json:"attempts,omitempty"`
}

// MountState is a volume's mount: from which sandbox, and which mount.
type MountState struct {
	// NetNS and NetNSPath are the pod's network namespace mounted from;
	// SandboxPID the sandbox process whose resolver files were used (0:
	// none).
	NetNS      nsmount.NSID `json:"netns"`
	NetNSPath  string       `json:"netns_path"`
	SandboxPID int          `json:"sandbox_pid,omitempty"`
	// Entry is the mount's registry entry ID; MountID and Dev the
	// kernel's mount ID and superblock device.
	Entry   string `json:"entry"`
	MountID uint64 `json:"mount_id"`
	Dev     string `json:"dev"`
	// Address is the server address mounted; ClientAddr the pod's address
	// the server sees.
	Address    string    `json:"address"`
	ClientAddr string    `json:"clientaddr,omitempty"`
	Mounted    time.Time `json:"mounted"`
}

// source and options rebuild the recorded volume's source and options.
func (r *Record) parse() error {
	src, err := nsmount.ParseSource(r.Source)
	if err != nil {
		return err
	}
	opts, err := nsmount.ParseOptions(r.Options)
	if err != nil {
		return err
	}
	r.Volume.Source, r.Volume.Options = src, opts
	return nil
}

// sameRequest reports whether v asks for exactly what r recorded (a
// repeated NodePublishVolume).
func (r *Record) sameRequest(v *Volume) bool {
	a, b := r.Volume, *v
	return a.ID == b.ID && a.TargetPath == b.TargetPath && a.Source == b.Source && a.FSType == b.FSType &&
		a.Options.String() == b.Options.String() && a.ReadOnly == b.ReadOnly && a.Pod == b.Pod && a.Ephemeral == b.Ephemeral
}

// store keeps one record file per target path in a directory (mode 0700):
// written atomically (temp file, fsync, rename, fsync of the directory),
// read strictly. The service serializes the changes to one pod's records.
type store struct {
	dir string
}

func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create csi state dir: %w", err)
	}
	return &store{dir: dir}, nil
}

// file returns the record file of a target path.
func (s *store) file(targetPath string) string {
	sum := sha256.Sum256([]byte(targetPath))
	return filepath.Join(s.dir, hex.EncodeToString(sum[:16])+".json")
}

// get returns the record of targetPath, nil if there is none.
func (s *store) get(targetPath string) (*Record, error) {
	r, err := s.read(s.file(targetPath))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if r.Volume.TargetPath != targetPath {
		return nil, fmt.Errorf("csi record %s is for %s, not %s", s.file(targetPath), r.Volume.TargetPath, targetPath)
	}
	return r, nil
}

// read reads and checks one record file.
func (s *store) read(name string) (*Record, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil {
		return nil, fmt.Errorf("read csi record: %w", err)
	}
	if len(data) > maxRecordSize {
		return nil, fmt.Errorf("csi record %s: larger than %d bytes", name, maxRecordSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("csi record %s: %s", name, oneLine(err))
	}
	switch {
	case r.Version != recordVersion:
		return nil, fmt.Errorf("csi record %s: format version %d, want %d", name, r.Version, recordVersion)
	case r.State != StatePending && r.State != StateMounted && r.State != StateFailed:
		return nil, fmt.Errorf("csi record %s: state %q", name, r.State)
	case r.State == StateMounted && r.Mount == nil:
		return nil, fmt.Errorf("csi record %s: mounted, but no mount recorded", name)
	}
	if err := r.parse(); err != nil {
		return nil, fmt.Errorf("csi record %s: %w", name, err)
	}
	return &r, nil
}

// put writes r atomically.
func (s *store) put(r *Record) error {
	r.Version = recordVersion
	r.Source, r.Options = r.Volume.Source.String(), r.Volume.Options.String()
	data, err := json.MarshalIndent(r, "", " ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, ".record-*")
	if err != nil {
		return fmt.Errorf("write csi record: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write csi record: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync csi record: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write csi record: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.file(r.Volume.TargetPath)); err != nil {
		return fmt.Errorf("replace csi record: %w", err)
	}
	return s.syncDir()
}

// remove deletes the record of targetPath; a missing one is no error.
func (s *store) remove(targetPath string) error {
	if err := os.Remove(s.file(targetPath)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove csi record: %w", err)
	}
	return s.syncDir()
}

func (s *store) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// list returns every record, ordered by target path, and one line per
// file that could not be read (left where it is).
func (s *store) list() ([]*Record, []string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("list csi records: %w", err)
	}
	var out []*Record
	var problems []string
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		name := filepath.Join(s.dir, e.Name())
		r, err := s.read(name)
		if err == nil && s.file(r.Volume.TargetPath) != name {
			err = fmt.Errorf("csi record %s is filed under the wrong name for %s", name, r.Volume.TargetPath)
		}
		if err != nil {
			problems = append(problems, oneLine(err))
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Volume.TargetPath < out[j].Volume.TargetPath })
	return out, problems, nil
}

// ofPod returns the records of the pod with the given UID.
func (s *store) ofPod(uid string) ([]*Record, []string, error) {
	all, problems, err := s.list()
	if err != nil {
		return nil, nil, err
	}
	var out []*Record
	for _, r := range all {
		if r.Volume.Pod.UID == uid {
			out = append(out, r)
		}
	}
	return out, problems, nil
}
