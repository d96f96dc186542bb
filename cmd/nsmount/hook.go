package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/nsmount/admission"
	"github.com/nsmount/nsmount/nsmount/integration/ocihook"
)

func newHookCommand() *cobra.Command {
	var stage, logPath string
	c := ocihook.Config{}
	cmd := &cobra.Command{
		Use:   "hook [--stage createRuntime|poststop] [--policy PATH] [--log FILE] [--owner hook|nri]",
		Short: "OCI runtime hook: mount the NFS volumes a container's annotation asks for",
		Long: `hook is an OCI runtime hook (runc, crun). It reads the container's state
(JSON) on stdin. At createRuntime it mounts what the container's
` + admission.MountsAnnotation + ` annotation asks for, as the host policy allows, into the
container's namespaces, before the container's process starts. A required
mount that fails fails the container (its mounts made so far are undone);
an optional one is skipped with a warning. At poststop it tears down.
Without the annotation it does nothing. One line per mount goes to stderr
(runc shows it only when the hook fails) and, with --log, to FILE.`,
		Example: `  "hooks": {
    "createRuntime": [{"path": "/usr/local/bin/nsmount", "args": ["nsmount", "hook", "--stage", "createRuntime"]}],
    "poststop":      [{"path": "/usr/local/bin/nsmount", "args": ["nsmount", "hook", "--stage", "poststop"]}]
  }`,
		Args: exactArgs(0, "no arguments (the OCI state comes on stdin)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.Owner != cachectl.OwnerHook && c.Owner != cachectl.OwnerNRI {
				return usageError{fmt.Errorf("--owner %q: want hook or nri", c.Owner)}
			}
			st := ocihook.Stage(stage)
			if stage != "" {
				var err error
				if st, err = ocihook.ParseStage(stage); err != nil {
					return usageError{fmt.Errorf("--stage %q: want %s or %s", stage, ocihook.CreateRuntime, ocihook.Poststop)}
				}
			}
			state, err := ocihook.ReadState(cmd.InOrStdin())
			if err != nil {
				return err
			}
			if st == "" {
				if st, err = ocihook.StageOf(state.Status); err != nil {
					return usageError{err}
				}
			}
			c.StateDir, _ = cmd.Flags().GetString("state-dir")
			res, err := ocihook.Run(cmd.Context(), state, st, c)
			// The log file is opened at the first line, so a hook with
			// nothing to do touches nothing.
			log := &hookLog{id: res.Container, path: logPath, stderr: cmd.ErrOrStderr()}
			defer log.close()
			for _, e := range res.Events {
				log.line("nsmount: container "+res.Container+": "+oneLine(e), true)
			}
			if err != nil {
				log.line("nsmount: "+oneLine(err.Error()), false) // main prints it on stderr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&stage, "stage", "", "hook stage: createRuntime or poststop (default: from the state's status)")
	cmd.Flags().StringVar(&c.Policy, "policy", admission.DefaultPolicyPath, "host policy file deciding what annotations may mount (missing: every mount is denied)")
	cmd.Flags().StringVar(&logPath, "log", "", "also append what the hook does to FILE")
	cmd.Flags().StringVar(&c.Owner, "owner", cachectl.OwnerHook, "who the registry names as the mounts' owner: hook, or nri when nsmount nri injected the hook")
	return cmd
}

// hookLog writes a hook's lines to stderr and, with --log, to the log
// file, "TIME LINE". The file is opened at the first line; a log that
// cannot be written is reported on stderr and does not stop the hook.
type hookLog struct {
	id     string // the container's
	path   string // "" without --log
	stderr io.Writer
	f      *os.File
}

// line writes line to the log, and to stderr too if toStderr.
func (l *hookLog) line(line string, toStderr bool) {
	if toStderr {
		fmt.Fprintln(l.stderr, line)
	}
	if l.path == "" {
		return
	}
	if l.f == nil {
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o640)
		if err != nil {
			fmt.Fprintf(l.stderr, "nsmount: container %s: warning: hook log: %s\n", l.id, oneLine(err.Error()))
			l.path = ""
			return
		}
		l.f = f
	}
	fmt.Fprintf(l.f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), line)
}

func (l *hookLog) close() {
	if l.f != nil {
		l.f.Close()
	}
}
