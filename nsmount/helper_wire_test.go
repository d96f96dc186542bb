package nsmount

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHelperErrorWire: an error made in the helper reaches the parent with
// its message, its class and its errno, through the JSON on the pipe, so
// that errors.Is works with both (the flush tells a busy copy by EBUSY).
func TestHelperErrorWire(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		class error
		errno unix.Errno
	}{
		{"class and errno", withClass(ErrMountFailed, fmt.Errorf("umount /data (198.51.100.1:/export): %w", unix.EBUSY)), ErrMountFailed, unix.EBUSY},
		{"errno in a path error", withClass(ErrUnsafePath, &os.PathError{Op: "openat2", Path: "/x", Err: unix.ELOOP}), ErrUnsafePath, unix.ELOOP},
		{"class only", withClass(ErrNotMounted, errors.New("no NFS mount at /data")), ErrNotMounted, 0},
		{"neither", errors.New("unknown helper op"), nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sent helperResponse
			sent.setErr(tc.err)
			wire, err := json.Marshal(sent)
			if err != nil {
				t.Fatal(err)
			}
			var got helperResponse
			if err := json.Unmarshal(wire, &got); err != nil {
				t.Fatal(err)
			}
			back := got.err()
			if back.Error() != tc.err.Error() {
				t.Errorf("message %q, want %q", back, tc.err)
			}
			if tc.class != nil && !errors.Is(back, tc.class) {
				t.Errorf("class lost: %v", back)
			}
			if tc.class == nil && ExitCode(back) != 1 {
				t.Errorf("a classless error got exit code %d", ExitCode(back))
			}
			if tc.errno != 0 && !errors.Is(back, tc.errno) {
				t.Errorf("errno %v lost: %#v", tc.errno, back)
			}
			if tc.errno == 0 && errors.Is(back, unix.EBUSY) {
				t.Errorf("an errno appeared: %#v", back)
			}
		})
	}
}
