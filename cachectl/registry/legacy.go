package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// legacyState is format 1 of the registry: every entry in one file, with a
// checksum of the whole state. Releases before the entry files wrote it;
// Open migrates it.
type legacyState struct {
	Version  int             `json:"version"`
	Checksum string          `json:"checksum"`
	State    json.RawMessage `json:"state"`
}

// decodeState decodes a format 1 registry file.
func decodeState(data []byte) (*State, error) {
	var ff legacyState
	raw, err := decodeChecked(data, &ff, func() (int, int, string, []byte) {
		return ff.Version, legacyFormat, ff.Checksum, ff.State
	})
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("parse state: %w", err)
	}
	return &s, nil
}

// readLegacy reads the format 1 file: nil, nil when there is none; a
// *CorruptError when it cannot be trusted.
func (r *Registry) readLegacy() (*State, error) {
	path := filepath.Join(r.dir, legacyFile)
	data, err := readLimited(path, maxStateSize+1)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	if len(data) > maxStateSize {
		return nil, &CorruptError{Path: path, Why: fmt.Errorf("larger than %d bytes", maxStateSize)}
	}
	s, err := decodeState(data)
	if err != nil {
		return nil, &CorruptError{Path: path, Why: err}
	}
	return s, nil
}

// migrate writes the entries of a format 1 file as entry files and renames
// it registry.json.migrated, under the exclusive lock. A corrupt one is
// left for Repair (the error wraps ErrCorrupt).
func (r *Registry) migrate() error {
	return r.locked(unix.LOCK_EX, func() error {
		s, err := r.readLegacy()
		if err != nil || s == nil {
			return err
		}
		for _, e := range s.Entries {
			if err := r.write(&e); err != nil {
				return fmt.Errorf("migrate registry: %w", err)
			}
		}
		path := filepath.Join(r.dir, legacyFile)
		if err := os.Rename(path, path+".migrated"); err != nil {
			return fmt.Errorf("migrate registry: %w", err)
		}
		return nil
	})
}
