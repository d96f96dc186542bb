//go:build !nsmount_split

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/nsmount/nsmount/cachectl/kmsg"
	"github.com/nsmount/nsmount/cachectl/metrics"
)

// logFlags choose how a long-running command logs (log/slog).
type logFlags struct {
	format, level string
}

func (f *logFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.format, "log-format", "text", "log line format: text (key=value) or json (one object per line)")
	cmd.Flags().StringVar(&f.level, "log-level", "info", "least level logged: debug, info, warn or error (watch logs every probe at debug)")
}

// logger returns the slog.Logger the flags ask for, writing to w.
func (f *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.level)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", f.level)}
	}
	o := &slog.HandlerOptions{Level: level}
	switch f.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, usageError{fmt.Errorf("--log-format %q: want text or json", f.format)}
}

// openKernelLog starts reading the kernel log for watch's watchdog. When
// it cannot be read (no CAP_SYSLOG, no /dev/kmsg), it says so and returns
// nil: watch runs without the watchdog.
func openKernelLog(ctx context.Context, log *slog.Logger) <-chan kmsg.Message {
	r, err := kmsg.Open(log)
	if err != nil {
		log.Warn("kernel log watchdog off", "error", oneLine(err.Error()))
		return nil
	}
	ch := make(chan kmsg.Message, 64)
	go func() {
		if err := r.Run(ctx, ch); err != nil {
			log.Warn("kernel log watchdog stopped", "error", oneLine(err.Error()))
		}
	}()
	return ch
}

// serveMetrics listens on addr and serves m's metrics (and the Go
// runtime's and the process's) at /metrics, and "ok" at /healthz, until
// ctx is done. The listener is open when it returns.
func serveMetrics(ctx context.Context, addr string, m *metrics.Metrics, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	if err := m.Register(reg); err != nil {
		return err
	}
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return fmt.Errorf("register metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slogPrinter{log},
		ErrorHandling: promhttp.ContinueOnError,
		// Beyond the collectors' own deadline (4 s): a last resort.
		Timeout: 10 * time.Second,
	}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-address: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "error", oneLine(err.Error()))
		}
	}()
	log.Info("serving metrics", "address", l.Addr().String(), "path", "/metrics")
	return nil
}

// slogPrinter gives promhttp's error log to slog.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) {
	p.log.Warn("metrics: " + oneLine(strings.TrimSpace(fmt.Sprintln(v...))))
}
