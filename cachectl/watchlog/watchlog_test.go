package watchlog_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl"
	"github.com/nsmount/nsmount/cachectl/kmsg"
	"github.com/nsmount/nsmount/cachectl/watchlog"
	"github.com/nsmount/nsmount/nsmount"
)

func TestLog(t *testing.T) {
	when := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	netns := nsmount.NSID{Dev: 4, Ino: 4026532338}
	tests := []struct {
		name, format, level string
		ev                  cachectl.WatchEvent
		want                string // "" = not logged
	}{
		{"dead, text", "text", "info",
			cachectl.WatchEvent{Time: when, Kind: "dead", Mountpoint: "/data", Source: "203.0.113.10:/export", NetNS: netns, Dev: "0:40", Detail: "server 203.0.113.10 does not answer (no answer in 2s)"},
			`time=2026-12-01T10:00:00.000Z level=WARN msg=dead mountpoint=/data source=203.0.113.10:/export netns=4026532338 dev=0:40 detail="server 203.0.113.10 does not answer (no answer in 2s)"` + "\n"},
		{"remounted, json", "json", "info",
			cachectl.WatchEvent{Time: when, Kind: "remounted", Mountpoint: "/data", NetNS: netns, Dev: "0:40", Container: "c1", Detail: "route drift: x;\nnow y", Elapsed: 1500 * time.Millisecond},
			`{"time":"2026-12-01T10:00:00Z","level":"INFO","msg":"remounted","mountpoint":"/data","netns":"4026532338","dev":"0:40","container":"c1","detail":"route drift: x; now y","elapsed":1.5}` + "\n"},
		{"retired, a warning", "text", "warn",
			cachectl.WatchEvent{Time: when, Kind: "retired", Mountpoint: "/data", NetNS: netns, Dev: "0:41", Detail: "shut down 0:41"},
			`time=2026-12-01T10:00:00.000Z level=WARN msg=retired mountpoint=/data netns=4026532338 dev=0:41 detail="shut down 0:41"` + "\n"},
		{"a probe at info", "text", "info", cachectl.WatchEvent{Time: when, Kind: "probe", Elapsed: time.Millisecond}, ""},
		{"a probe at debug", "text", "debug", cachectl.WatchEvent{Time: when, Kind: "probe", Mountpoint: "/data", Detail: "ok", Elapsed: 20 * time.Millisecond},
			"time=2026-12-01T10:00:00.000Z level=DEBUG msg=probe mountpoint=/data detail=ok elapsed=0.02\n"},
		{"an attributed kernel line", "text", "info",
			cachectl.WatchEvent{Time: when, Kind: "kernel", Detail: "attributed: nfs: server s not responding, still trying", Kernel: &cachectl.KernelReport{
				Message: kmsg.Message{Kind: kmsg.NotResponding, Server: "s"}, Count: 2, Attribution: cachectl.Attributed}},
			`time=2026-12-01T10:00:00.000Z level=WARN msg=kernel kmsg=not-responding server=s attribution=attributed count=2 detail="attributed: nfs: server s not responding, still trying"` + "\n"},
		{"an error", "text", "warn", cachectl.WatchEvent{Time: when, Kind: "error", Detail: "scan: x"},
			"time=2026-12-01T10:00:00.000Z level=ERROR msg=error detail=\"scan: x\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			var level slog.Level
			if err := level.UnmarshalText([]byte(tt.level)); err != nil {
				t.Fatal(err)
			}
			h := slog.Handler(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: level}))
			if tt.format == "json" {
				h = slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: level})
			}
			watchlog.Log(context.Background(), slog.New(h), tt.ev)
			if out.String() != tt.want {
				t.Errorf("got  %q\nwant %q", out.String(), tt.want)
			}
			if tt.format == "json" && tt.want != "" && !json.Valid(out.Bytes()) {
				t.Errorf("not JSON: %s", out.String())
			}
		})
	}
}
