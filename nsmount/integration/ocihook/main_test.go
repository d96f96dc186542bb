package ocihook_test

import (
	"os"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
)

// TestMain lets the test binary act as nsmount's mount helper. The hook
// run by a real runc is tested through the product binary, in
// cmd/nsmount's TestHookRunc.
func TestMain(m *testing.M) {
	nsmount.RunHelper()
	os.Exit(m.Run())
}
