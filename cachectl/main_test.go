package cachectl

import (
	"os"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
)

// TestMain lets the re-executed test binary act as the mount helper: a
// probe or an unmount starts /proc/self/exe as nsmount's helper. Without
// it the helper was the whole test binary again: every probe of these
// tests ran the package's tests anew in a child, killed at the probe's
// timeout with its temporary directories left behind (90 per run of
// TestStatusProbesRecordedPort).
func TestMain(m *testing.M) {
	nsmount.RunHelper()
	os.Exit(m.Run())
}
