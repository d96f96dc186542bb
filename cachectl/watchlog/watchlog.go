// Package watchlog writes watch's events (cachectl.WatchEvent) as log/slog
// records, one per event: the event's kind as the message, a level that
// follows from the kind, then what the event is about (mountpoint,
// source, netns, dev, container; for a kernel log line its kind, server,
// attribution and count; detail on one line; elapsed in seconds).
package watchlog

import (
	"context"
	"log/slog"
	"strings"

	"github.com/nsmount/nsmount/cachectl"
)

// Level is how loud an event is: probe DEBUG; dead, stale, broken,
// denied, unresponsive, retired and an attributed or ambiguous kernel line
// WARN; error and remount-failed ERROR; anything else INFO.
func Level(e cachectl.WatchEvent) slog.Level {
	switch e.Kind {
	case "probe":
		return slog.LevelDebug
	case "dead", "stale", "broken", "denied", "unresponsive", "retired":
		return slog.LevelWarn
	case "error", "remount-failed":
		return slog.LevelError
	case "kernel":
		if e.Kernel != nil && e.Kernel.Attribution != cachectl.Unrelated {
			return slog.LevelWarn
		}
	}
	return slog.LevelInfo
}

// Log logs e to log as one record, at e's time and Level.
func Log(ctx context.Context, log *slog.Logger, e cachectl.WatchEvent) {
	level := Level(e)
	if !log.Enabled(ctx, level) {
		return
	}
	var attrs []slog.Attr
	add := func(key, value string) {
		if value != "" {
			attrs = append(attrs, slog.String(key, value))
		}
	}
	add("mountpoint", e.Mountpoint)
	add("source", e.Source)
	if !e.NetNS.IsZero() {
		add("netns", e.NetNS.String())
	}
	add("dev", e.Dev)
	add("container", e.Container)
	if k := e.Kernel; k != nil {
		add("kmsg", string(k.Message.Kind))
		add("server", k.Message.Server)
		add("attribution", k.Attribution)
		attrs = append(attrs, slog.Int("count", k.Count))
	}
	add("detail", strings.Join(strings.Fields(e.Detail), " "))
	if e.Elapsed > 0 {
		attrs = append(attrs, slog.Float64("elapsed", e.Elapsed.Seconds()))
	}
	r := slog.NewRecord(e.Time, level, e.Kind, 0)
	r.AddAttrs(attrs...)
	log.Handler().Handle(ctx, r)
}
