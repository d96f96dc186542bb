package registry

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecodeState: the registry file is nsmount's own, but it lives on a
// filesystem others can reach (and crash halfway through a write): a file
// that decodes must round-trip, and no file may panic the decoder.
func FuzzDecodeState(f *testing.F) {
	var valid bytes.Buffer
	raw, _ := json.Marshal(&State{Entries: []Entry{{ID: "4026532280:530", Mountpoint: "/data", Dev: "0:53", Owner: "hook"}}})
	json.Indent(&valid, fmtFile(raw), "", " ")
	f.Add(valid.Bytes())
	f.Add(fmtFile([]byte(`{"entries":[]}`)))
	f.Add([]byte(`{"version":1,"checksum":"sha256:00","state":{"entries":[]}}`))
	f.Add([]byte("\x00\xffnot json"))
	f.Add(append(valid.Bytes(), '}'))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decodeState(data)
		if err != nil {
			return
		}
		again, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("a decoded state does not encode: %v", err)
		}
		back, err := decodeState(fmtFile(again))
		if err != nil {
			t.Fatalf("a decoded state does not decode again: %v", err)
		}
		if !reflect.DeepEqual(s, back) {
			t.Fatalf("round trip changed the state:\n%+v\n%+v", s, back)
		}
	})
}

// fmtFile wraps raw state JSON in the file format with a right checksum.
func fmtFile(raw []byte) []byte {
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		compact.Write(raw)
	}
	b, _ := json.Marshal(fileFormat{Version: formatVersion, Checksum: checksum(compact.Bytes()), State: raw})
	return b
}
