package nsmount_test

import (
	"os"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
)

// TestMain lets the re-executed test binary act as the mount helper: Mount
// and Unmount start /proc/self/exe with argv[0] "nsmount-helper".
func TestMain(m *testing.M) {
	nsmount.RunHelper()
	os.Exit(m.Run())
}
