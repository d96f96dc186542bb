package nriconn

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"syscall"

	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
)

// StubLogger returns a logger for the NRI stub that passes its warnings
// and errors on to log, each on one line with source=nri, and drops its
// chatter (debug, info).
func StubLogger(log *slog.Logger) nrilog.Logger { return stubLogger{log} }

type stubLogger struct{ log *slog.Logger }

func (stubLogger) Debugf(context.Context, string, ...any) {}
func (stubLogger) Infof(context.Context, string, ...any)  {}
func (l stubLogger) Warnf(_ context.Context, format string, args ...any) {
	l.log.Warn(report.OneLine(fmt.Sprintf(format, args...)), "source", "nri")
}
func (l stubLogger) Errorf(_ context.Context, format string, args ...any) {
	l.log.Error(report.OneLine(fmt.Sprintf(format, args...)), "source", "nri")
}

// StartError words a failure of the stub to connect to the runtime's NRI
// socket or to register there. A socket that does not exist or that nobody
// listens on is nsmount.ErrTargetNotFound (unless the runtime started the
// plugin and handed it the connection), a registration past its deadline
// nsmount.ErrTimeout.
func StartError(socket string, err error) error {
	if os.Getenv(api.PluginSocketEnvVar) == "" {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("NRI socket %s does not exist (is the runtime running, with NRI enabled?)", socket))
		case errors.Is(err, syscall.ECONNREFUSED):
			return nsmount.WithClass(nsmount.ErrTargetNotFound, fmt.Errorf("NRI socket %s: nobody listens (is the runtime running?)", socket))
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return nsmount.WithClass(nsmount.ErrTimeout, fmt.Errorf("register with the runtime at %s: %w", socket, err))
	}
	return fmt.Errorf("register with the runtime at %s: %s", socket, report.OneLine(err.Error()))
}
