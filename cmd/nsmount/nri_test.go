//go:build !nsmount_split

package main

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/nri"
)

func TestNRIOptions(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	good := nri.Config{Socket: "/run/nri.sock", Name: "nsmount", Idx: "10", Policy: "/etc/p.json", Nsmount: exe, StateDir: "/run/nsmount"}
	for _, tc := range []struct {
		name   string
		change func(o *nri.Config)
		want   string // "" valid
	}{
		{name: "good", change: func(*nri.Config) {}},
		{name: "relative policy", change: func(o *nri.Config) { o.Policy = "p.json" }, want: `--policy "p.json": want a clean absolute path`},
		{name: "unclean log", change: func(o *nri.Config) { o.Log = "/var/log/../x" }, want: `--log "/var/log/../x"`},
		{name: "relative state dir", change: func(o *nri.Config) { o.StateDir = "run" }, want: `--state-dir "run"`},
		{name: "idx", change: func(o *nri.Config) { o.Idx = "1" }, want: `--plugin-idx "1"`},
		{name: "name", change: func(o *nri.Config) { o.Name = "a b" }, want: `--plugin-name "a b"`},
		{name: "empty name", change: func(o *nri.Config) { o.Name = "" }, want: `--plugin-name ""`},
		{name: "not executable", change: func(o *nri.Config) { o.Nsmount = "/etc/passwd" }, want: "--nsmount /etc/passwd: not an executable file"},
		{name: "missing", change: func(o *nri.Config) { o.Nsmount = "/nonexistent/nsmount" }, want: "not an executable file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.change(&o)
			err := validateNRI(&o)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("validate = %v, want %q", err, tc.want)
			}
			var uerr usageError
			if err != nil && !errors.As(err, &uerr) && !errors.Is(err, nsmount.ErrInvalidArgument) {
				t.Errorf("validate = %v: want a usage error or an invalid argument", err)
			}
		})
	}
}
