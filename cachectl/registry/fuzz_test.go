package registry

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecodeEntry: an entry file is nsmount's own, but it lives on a
// filesystem others can reach (and a crash can tear a write): a file that
// decodes must round-trip, and no file may panic the decoder.
func FuzzDecodeEntry(f *testing.F) {
	e := Entry{ID: "4026532280:530", Mountpoint: "/data", Dev: "0:53", Owner: "hook"}
	raw, _ := json.Marshal(&e)
	var valid bytes.Buffer
	json.Indent(&valid, entryBytes(raw), "", " ")
	f.Add(valid.Bytes())
	f.Add(entryBytes([]byte(`{"id":"x"}`)))
	f.Add([]byte(`{"version":2,"checksum":"sha256:00","entry":{"id":"x"}}`))
	f.Add([]byte("\x00\xffnot json"))
	f.Add(append(valid.Bytes(), '}'))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := decodeEntry(data)
		if err != nil {
			return
		}
		again, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("a decoded entry does not encode: %v", err)
		}
		back, err := decodeEntry(entryBytes(again))
		if err != nil {
			t.Fatalf("a decoded entry does not decode again: %v", err)
		}
		if !reflect.DeepEqual(e, back) {
			t.Fatalf("round trip changed the entry:\n%+v\n%+v", e, back)
		}
		if n := fileName(e); len(n) > 255*4 || bytes.ContainsAny([]byte(n), "/\x00") {
			t.Fatalf("entry %q gets the file name %q", e.ID, n)
		}
	})
}

// FuzzDecodeState: the one file of earlier releases, read once to migrate
// it: the same promises.
func FuzzDecodeState(f *testing.F) {
	raw, _ := json.Marshal(&State{Entries: []Entry{{ID: "4026532280:530", Mountpoint: "/data", Dev: "0:53", Owner: "hook"}}})
	f.Add(legacyBytes(raw))
	f.Add(legacyBytes([]byte(`{"entries":[]}`)))
	f.Add([]byte(`{"version":1,"checksum":"sha256:00","state":{"entries":[]}}`))
	f.Add([]byte("\x00\xffnot json"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decodeState(data)
		if err != nil {
			return
		}
		again, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("a decoded state does not encode: %v", err)
		}
		back, err := decodeState(legacyBytes(again))
		if err != nil {
			t.Fatalf("a decoded state does not decode again: %v", err)
		}
		if !reflect.DeepEqual(s, back) {
			t.Fatalf("round trip changed the state:\n%+v\n%+v", s, back)
		}
	})
}

func compactOf(raw []byte) []byte {
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return raw
	}
	return compact.Bytes()
}

// entryBytes wraps raw entry JSON in the entry file format.
func entryBytes(raw []byte) []byte {
	b, _ := json.Marshal(entryFile{Version: entryFormat, Checksum: checksum(compactOf(raw)), Entry: raw})
	return b
}

// legacyBytes wraps raw state JSON in the format 1 file format.
func legacyBytes(raw []byte) []byte {
	b, _ := json.Marshal(legacyState{Version: legacyFormat, Checksum: checksum(compactOf(raw)), State: raw})
	return b
}
