// Package fuzzseed holds what the fuzz targets of nsmount's parsers share:
// their seed corpus from test vector files, and the contract every parse
// error keeps (class invalid argument, one line). It is for tests only.
package fuzzseed

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
)

// AddFiles adds the contents of every file matching pattern to f's seed
// corpus; it fails f when none matches.
func AddFiles(f *testing.F, pattern string) {
	f.Helper()
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed vectors %s: %v", pattern, err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

// CheckInvalid fails t unless err keeps the contract of a parse error of
// untrusted input: class invalid argument (exit code 3) and one line.
func CheckInvalid(t testing.TB, err error) {
	t.Helper()
	if !errors.Is(err, nsmount.ErrInvalidArgument) || nsmount.ExitCode(err) != 3 {
		t.Fatalf("error %q: want class invalid argument", err)
	}
	if strings.ContainsAny(err.Error(), "\n\r") {
		t.Fatalf("error spans lines: %q", err)
	}
}
