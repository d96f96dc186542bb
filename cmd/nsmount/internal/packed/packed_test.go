package packed

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// envRole makes the test binary act as the launcher ("launch") or as the
// launched full binary ("full"), or as a helper the full binary starts
// ("helper": exits 0).
const envRole = "NSMOUNT_PACKED_TEST_ROLE"

// TestMain: as "launch", the test binary runs itself, compressed, through
// Exec, as the product binary runs the full one; as "full", it reports
// what FromLauncher says, and whether the launcher's descriptor is the
// launcher's executable, close-on-exec, with the environment cleaned.
func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "launch":
		self, err := os.ReadFile("/proc/self/exe")
		if err != nil {
			panic(err)
		}
		enc, _ := zstd.NewWriter(nil)
		os.Setenv(envRole, "full")
		err = Exec(enc.EncodeAll(self, nil), []string{"nsmount", "arg"}, os.Environ())
		os.Stderr.WriteString("exec: " + err.Error() + "\n")
		os.Exit(3)
	case "full":
		os.Exit(full())
	case "helper":
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func full() int {
	l, err := FromLauncher()
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 4
	}
	exe, _ := os.Readlink("/proc/self/exe")
	var helper, launcher unix.Stat_t
	if err := unix.Stat(l.Helper, &helper); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 5
	}
	if err := unix.Stat(l.Path, &launcher); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		return 5
	}
	fd := filepath.Base(l.Helper)
	flags, _ := os.ReadFile("/proc/self/fdinfo/" + fd)
	// Started as a mount helper is: with descriptors at 3, 4 and 5 in the
	// child; the last of them here just below Helper's descriptor, where
	// Go's fork puts its exec-error pipe at one past the highest.
	n, _ := strconv.Atoi(fd)
	var extra []*os.File
	for k := range 3 {
		f, _ := os.Open("/dev/null")
		if k == 2 {
			unix.Dup3(int(f.Fd()), n-1, unix.O_CLOEXEC)
			f.Close()
			f = os.NewFile(uintptr(n-1), "/dev/null")
		}
		extra = append(extra, f)
	}
	helperCmd := &exec.Cmd{Path: l.Helper, Args: []string{"nsmount-helper"}, Env: append(os.Environ(), envRole+"=helper"), ExtraFiles: extra}
	helperErr := helperCmd.Run()
	os.Stdout.WriteString(strings.Join([]string{
		"exe " + exe,
		"args " + strings.Join(os.Args, " "),
		"same " + boolText(helper.Ino == launcher.Ino && helper.Dev == launcher.Dev),
		"env " + os.Getenv(envFD) + os.Getenv(envPath),
		"fdinfo " + strings.Fields(strings.SplitN(string(flags), "flags:", 2)[1])[0],
		"fd " + fd,
		"path " + l.Helper,
		"helper " + fmt.Sprint(helperErr),
	}, "\n") + "\n")
	return 0
}

func boolText(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// TestExec: the launched binary runs from a sealed memfd with the given
// arguments, and FromLauncher gives it a descriptor of the launcher's own
// executable (close-on-exec) and its path, and removes both from the
// environment.
func TestExec(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envRole+"=launch")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("launcher: %v: %s", err, stderr.String())
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		got[k] = v
	}
	if !strings.HasPrefix(got["exe"], "/memfd:nsmount-full") {
		t.Errorf("full binary's executable %q: want the memfd", got["exe"])
	}
	if got["args"] != "nsmount arg" {
		t.Errorf("full binary's args %q, want %q", got["args"], "nsmount arg")
	}
	if got["same"] != "yes" {
		t.Errorf("Launcher.Helper is not the launcher's executable")
	}
	if got["env"] != "" {
		t.Errorf("launcher environment left for children: %q", got["env"])
	}
	if n, err := strconv.Atoi(got["fd"]); err != nil || n < helperFDMin {
		t.Errorf("Launcher.Helper at descriptor %s, want at least %d", got["fd"], helperFDMin)
	}
	if got["helper"] != "<nil>" {
		t.Errorf("Launcher.Helper started with three ExtraFiles, the last just below it: %s", got["helper"])
	}
	if !strings.HasPrefix(got["path"], "/proc/") || strings.HasPrefix(got["path"], "/proc/self/") {
		t.Errorf("Launcher.Helper %q: want /proc/PID/fd/N (a child resolves /proc/self in its own descriptor table)", got["path"])
	}
	// O_CLOEXEC is 02000000 in fdinfo's octal flags.
	if f := got["fdinfo"]; len(f) < 7 || f[len(f)-7] != '2' && f[len(f)-7] != '3' {
		t.Errorf("launcher descriptor flags %s: want close-on-exec", f)
	}
}

// TestFromLauncherRefuses: a descriptor that is not a number, not open or
// not a regular file, or a relative path, is an error, and the environment
// is cleaned anyway.
func TestFromLauncherRefuses(t *testing.T) {
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	for _, tc := range []struct{ fd, path, want string }{
		{"x", "/usr/bin/nsmount", "not a descriptor"},
		{"1", "/usr/bin/nsmount", "not a descriptor"},
		{"999", "/usr/bin/nsmount", "not an open regular file"},
		{strconv.Itoa(int(dir.Fd())), "/usr/bin/nsmount", "not an open regular file"},
		{strconv.Itoa(int(self.Fd())), "bin/nsmount", "not an absolute path"},
	} {
		t.Setenv(envFD, tc.fd)
		t.Setenv(envPath, tc.path)
		if _, err := FromLauncher(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("FromLauncher with %s=%q: %v, want %q", envFD, tc.fd, err, tc.want)
		}
		if _, ok := os.LookupEnv(envFD); ok {
			t.Errorf("%s left in the environment", envFD)
		}
	}
	if l, err := FromLauncher(); err != nil || l != (Launcher{}) {
		t.Errorf("FromLauncher without the environment: %+v, %v", l, err)
	}
}

// TestExecEmpty: a split build without its payload says so.
func TestExecEmpty(t *testing.T) {
	if err := Exec(nil, []string{"nsmount"}, nil); err == nil || !strings.Contains(err.Error(), "no full binary") {
		t.Errorf("Exec(nil) = %v", err)
	}
}
