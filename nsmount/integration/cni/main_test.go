package cni_test

import (
	"os"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
)

// TestMain lets the test binary act as nsmount's mount helper: a teardown
// that flushes unmounts through it.
func TestMain(m *testing.M) {
	nsmount.RunHelper()
	os.Exit(m.Run())
}
