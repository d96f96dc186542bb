package nsmount

import (
	"errors"
)

// Error classes. Every error returned by this package wraps exactly one of
// them, so that callers (and the CLI's exit codes) can branch with errors.Is
// without parsing text. The classes follow containerd's errdefs: the message
// carries the context, the class carries the kind.
var (
	// ErrInvalidArgument: a malformed source, export, option or flag.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrTargetNotFound: the target process or namespace does not exist.
	ErrTargetNotFound = errors.New("target not found")
	// ErrUnsafePath: the mount point escapes the container's root, is not a
	// directory, or does not exist (without --mkdir).
	ErrUnsafePath = errors.New("unsafe or missing target path")
	// ErrUnreachable: the server cannot be reached from the target's network.
	ErrUnreachable = errors.New("server unreachable")
	// ErrMountFailed: the kernel refused the mount.
	ErrMountFailed = errors.New("mount failed")
	// ErrNotVerified: the mount was made but its NFS client does not live in
	// the target's network namespace; it has been undone.
	ErrNotVerified = errors.New("mount not verified")
	// ErrTimeout: a bounded wait expired.
	ErrTimeout = errors.New("timed out")
	// ErrNotMounted: umount found no NFS mount at the path.
	ErrNotMounted = errors.New("not mounted")
	// ErrDenied: the host's policy does not allow the mount.
	ErrDenied = errors.New("denied by policy")
	// ErrStaleState: stale NFS client state in the target's network
	// namespace (a superblock of the same server that outlived its mount)
	// would be inherited by the mount, and could not or may not be flushed.
	ErrStaleState = errors.New("stale NFS client state")
)

// classes lists the error classes in the order ExitCode checks them.
var classes = []struct {
	err  error
	code int
}{
	{ErrInvalidArgument, 3},
	{ErrTargetNotFound, 4},
	{ErrUnsafePath, 5},
	{ErrUnreachable, 6},
	{ErrMountFailed, 7},
	{ErrNotVerified, 8},
	{ErrTimeout, 9},
	{ErrNotMounted, 10},
	{ErrDenied, 11},
	{ErrStaleState, 12},
}

// ExitCode maps an error to the documented process exit code: 0 for nil,
// 3..12 for the classes above, 1 for anything else. Exit code 2 is reserved
// for command-line usage errors.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return 1
}

// classError attaches a class to an error without changing its message.
type classError struct {
	class error
	err   error
}

func (e *classError) Error() string { return e.err.Error() }

func (e *classError) Unwrap() []error { return []error{e.err, e.class} }

// withClass returns err marked with class, or nil for a nil err. An error
// that already carries a class keeps it.
func withClass(class, err error) error {
	if err == nil {
		return nil
	}
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return err
		}
	}
	return &classError{class: class, err: err}
}

// WithClass marks err with one of this package's error classes (for code
// built on this package, such as cachectl), keeping its message. An error
// that already carries a class keeps it; nil stays nil.
func WithClass(class, err error) error { return withClass(class, err) }

// className returns the name of err's class ("" for none), as the helper
// sends it over its pipe.
func className(err error) string {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.err.Error()
		}
	}
	return ""
}

// classByName returns the class named name, nil for none.
func classByName(name string) error {
	for _, c := range classes {
		if c.err.Error() == name {
			return c.err
		}
	}
	return nil
}
