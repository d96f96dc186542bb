package nsmount

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/nsmount/nsmount/routing"

	"golang.org/x/sys/unix"
)

func TestParseSource(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Source
		wantErr error
	}{
		{"IPv4", "192.0.2.1:/export", Source{"192.0.2.1", "/export"}, nil},
		{"IPv4 nested export", "198.51.100.7:/srv/nfs/a", Source{"198.51.100.7", "/srv/nfs/a"}, nil},
		{"bracketed IPv6", "[2001:db8::1]:/export", Source{"2001:db8::1", "/export"}, nil},
		{"host name", "nfs-1.example.org:/data", Source{"nfs-1.example.org", "/data"}, nil},
		{"root export", "192.0.2.1:/", Source{"192.0.2.1", "/"}, nil},
		{"unbracketed IPv6", "2001:db8::1:/export", Source{}, ErrInvalidArgument},
		{"bracketed IPv4", "[192.0.2.1]:/export", Source{}, ErrInvalidArgument},
		{"unterminated bracket", "[2001:db8::1:/export", Source{}, ErrInvalidArgument},
		{"missing export", "192.0.2.1", Source{}, ErrInvalidArgument},
		{"missing export after colon", "192.0.2.1:", Source{}, ErrInvalidArgument},
		{"relative export", "192.0.2.1:export", Source{}, ErrInvalidArgument},
		{"relative export IPv6", "[2001:db8::1]:export", Source{}, ErrInvalidArgument},
		{"empty server", ":/export", Source{}, ErrInvalidArgument},
		{"empty brackets", "[]:/export", Source{}, ErrInvalidArgument},
		{"bad hostname chars", "nfs$srv:/export", Source{}, ErrInvalidArgument},
		{"hostname with space", "nfs srv:/export", Source{}, ErrInvalidArgument},
		{"hostname leading dash", "-nfs:/export", Source{}, ErrInvalidArgument},
		{"hostname empty label", "nfs..example:/export", Source{}, ErrInvalidArgument},
		{"newline in export", "192.0.2.1:/exp\nort", Source{}, ErrInvalidArgument},
		{"NUL in server", "192.0.2.1\x00:/export", Source{}, ErrInvalidArgument},
		{"DEL in export", "192.0.2.1:/exp\x7fort", Source{}, ErrInvalidArgument},
		{"too long", "192.0.2.1:/" + strings.Repeat("a", 4096), Source{}, ErrInvalidArgument},
		{"empty", "", Source{}, ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSource(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseSource(%q) = %+v, %v; want error %v", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSource(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseSource(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestSourceString(t *testing.T) {
	tests := []struct {
		src  Source
		want string
	}{
		{Source{"192.0.2.1", "/export"}, "192.0.2.1:/export"},
		{Source{"2001:db8::1", "/export"}, "[2001:db8::1]:/export"},
		{Source{"nfs.example.org", "/x"}, "nfs.example.org:/x"},
	}
	for _, tt := range tests {
		if got := tt.src.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.src, got, tt.want)
		}
		// What String prints must parse back to the same source.
		if back, err := ParseSource(tt.want); err != nil || back != tt.src {
			t.Errorf("ParseSource(%q) = %+v, %v; want %+v", tt.want, back, err, tt.src)
		}
	}
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Options
		wantErr bool
	}{
		{"empty", "", nil, false},
		{"flag", "nolock", Options{{Key: "nolock"}}, false},
		{"key=value", "vers=4.2", Options{{Key: "vers", Value: "4.2", HasValue: true}}, false},
		{"empty value", "sec=", Options{{Key: "sec", HasValue: true}}, false},
		{"value with =", "fsc=a=b", Options{{Key: "fsc", Value: "a=b", HasValue: true}}, false},
		{"mixed in order", "vers=4.1,ro,port=2050,nolock", Options{
			{Key: "vers", Value: "4.1", HasValue: true},
			{Key: "ro"},
			{Key: "port", Value: "2050", HasValue: true},
			{Key: "nolock"},
		}, false},
		{"underscore and dash", "_netdev,local-lock=none", Options{{Key: "_netdev"}, {Key: "local-lock", Value: "none", HasValue: true}}, false},
		{"empty option", "a,,b", nil, true},
		{"trailing comma", "a,", nil, true},
		{"leading comma", ",a", nil, true},
		{"empty key", "=x", nil, true},
		{"upper case key", "Vers=4", nil, true},
		{"space in key", "no lock", nil, true},
		{"slash in key", "a/b", nil, true},
		{"control char in key", "a\tb", nil, true},
		{"control char in value", "sec=sys\n", nil, true},
		{"NUL in value", "sec=s\x00ys", nil, true},
		{"DEL in value", "sec=s\x7fys", nil, true},
		{"too long", "a=" + strings.Repeat("x", 4096), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOptions(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidArgument) {
					t.Fatalf("ParseOptions(%q) = %v, %v; want ErrInvalidArgument", tt.in, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseOptions(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseOptions(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			if tt.in != "" && got.String() != tt.in {
				t.Errorf("Options.String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestOptionsGetLastWins(t *testing.T) {
	opts, err := ParseOptions("port=1,nolock,port=2")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := opts.Get("port"); !ok || v != "2" {
		t.Errorf(`Get("port") = %q, %v; want "2", true`, v, ok)
	}
	if _, ok := opts.Get("vers"); ok {
		t.Error(`Get("vers") found an option that was not given`)
	}
}

func mustOptions(t *testing.T, s string) Options {
	t.Helper()
	opts, err := ParseOptions(s)
	if err != nil {
		t.Fatalf("ParseOptions(%q): %v", s, err)
	}
	return opts
}

func TestBuildSpec(t *testing.T) {
	src := Source{Server: "192.0.2.1", Export: "/export"}
	addr := netip.MustParseAddr("192.0.2.1")
	client := netip.MustParseAddr("192.0.2.2")
	const defAttrs = unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV

	tests := []struct {
		name       string
		fstype     string
		opts       string
		clientAddr netip.Addr
		wantAttrs  uint64
		wantVers   []string
		wantParams string // spec.Params.String()
		wantErr    error
	}{
		{
			name: "defaults nfs", fstype: "nfs", clientAddr: client,
			wantAttrs: defAttrs, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1,clientaddr=192.0.2.2",
		},
		{
			name: "defaults nfs4", fstype: "nfs4", clientAddr: client,
			wantAttrs: defAttrs, wantVers: []string{"4.2", "4.1", "4.0"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1,clientaddr=192.0.2.2",
		},
		{
			name: "no client address known", fstype: "nfs",
			wantAttrs: defAttrs, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1",
		},
		{
			name: "suid clears nosuid", fstype: "nfs", opts: "suid",
			wantAttrs: unix.MOUNT_ATTR_NODEV, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1",
		},
		{
			name: "dev clears nodev", fstype: "nfs", opts: "dev",
			wantAttrs: unix.MOUNT_ATTR_NOSUID, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1",
		},
		{
			name: "suid and dev", fstype: "nfs", opts: "suid,dev,noexec",
			wantAttrs: unix.MOUNT_ATTR_NOEXEC, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1",
		},
		{
			name: "ro is an attribute and an fs flag", fstype: "nfs", opts: "ro",
			wantAttrs: defAttrs | unix.MOUNT_ATTR_RDONLY, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1,ro",
		},
		{
			name: "noatime", fstype: "nfs", opts: "noatime",
			wantAttrs: defAttrs | unix.MOUNT_ATTR_NOATIME, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1",
		},
		{
			name: "fstab-only options ignored", fstype: "nfs", opts: "defaults,_netdev,nofail",
			wantAttrs: defAttrs, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1",
		},
		{
			name: "nfs options passed in order", fstype: "nfs", opts: "nolock,timeo=600,sec=sys",
			wantAttrs: defAttrs, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1,nolock,timeo=600,sec=sys",
		},
		{
			name: "vers=4 normalised", fstype: "nfs", opts: "vers=4", clientAddr: client,
			wantAttrs: defAttrs, wantVers: []string{"4.0"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1,clientaddr=192.0.2.2",
		},
		{
			name: "nfsvers=4.1", fstype: "nfs4", opts: "nfsvers=4.1",
			wantAttrs: defAttrs, wantVers: []string{"4.1"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1",
		},
		{
			name: "last vers wins", fstype: "nfs", opts: "vers=4.2,vers=4.0",
			wantAttrs: defAttrs, wantVers: []string{"4.0"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1",
		},
		{
			name: "vers=3 gets no clientaddr", fstype: "nfs", opts: "vers=3", clientAddr: client,
			wantAttrs: defAttrs, wantVers: []string{"3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1",
		},
		{
			name: "user clientaddr kept", fstype: "nfs", opts: "clientaddr=203.0.113.5", clientAddr: client,
			wantAttrs: defAttrs, wantVers: []string{"4.2", "4.1", "4.0", "3"},
			wantParams: "source=192.0.2.1:/export,addr=192.0.2.1,clientaddr=203.0.113.5",
		},
		{name: "addr rejected", fstype: "nfs", opts: "addr=192.0.2.9", wantErr: ErrInvalidArgument},
		{name: "source rejected", fstype: "nfs", opts: "source=x", wantErr: ErrInvalidArgument},
		{name: "nfs4 with vers=3", fstype: "nfs4", opts: "vers=3", wantErr: ErrInvalidArgument},
		{name: "unknown version", fstype: "nfs", opts: "vers=5", wantErr: ErrInvalidArgument},
		{name: "vers without value", fstype: "nfs", opts: "vers", wantErr: ErrInvalidArgument},
		{name: "vers empty", fstype: "nfs", opts: "vers=", wantErr: ErrInvalidArgument},
		{name: "minorversion", fstype: "nfs", opts: "minorversion=1", wantErr: ErrInvalidArgument},
		{name: "bad clientaddr", fstype: "nfs", opts: "clientaddr=host", wantErr: ErrInvalidArgument},
		{name: "unsupported fstype", fstype: "ext4", wantErr: ErrInvalidArgument},
		{name: "empty fstype", fstype: "", wantErr: ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := buildSpec(tt.fstype, src, mustOptions(t, tt.opts), addr, tt.clientAddr)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("buildSpec(%q, %q) = %+v, %v; want error %v", tt.fstype, tt.opts, spec, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("buildSpec(%q, %q): %v", tt.fstype, tt.opts, err)
			}
			if spec.FSType != tt.fstype {
				t.Errorf("FSType = %q, want %q", spec.FSType, tt.fstype)
			}
			if spec.Attrs != tt.wantAttrs {
				t.Errorf("Attrs = %#x, want %#x", spec.Attrs, tt.wantAttrs)
			}
			if !reflect.DeepEqual(spec.Vers, tt.wantVers) {
				t.Errorf("Vers = %q, want %q", spec.Vers, tt.wantVers)
			}
			if got := spec.Params.String(); got != tt.wantParams {
				t.Errorf("Params = %q, want %q", got, tt.wantParams)
			}
		})
	}
}

func TestBuildSpecIPv6Source(t *testing.T) {
	src := Source{Server: "2001:db8::1", Export: "/export"}
	spec, err := buildSpec("nfs4", src, nil, netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"))
	if err != nil {
		t.Fatal(err)
	}
	want := "source=[2001:db8::1]:/export,addr=2001:db8::1,clientaddr=2001:db8::2"
	if got := spec.Params.String(); got != want {
		t.Errorf("Params = %q, want %q", got, want)
	}
}

// TestBuildSpecReadOnlyLastWins: of "ro" and "rw", the last one given
// decides, both for the mount attribute and for the superblock flags that
// reach the kernel as fs parameters.
func TestBuildSpecReadOnlyLastWins(t *testing.T) {
	src := Source{Server: "192.0.2.1", Export: "/export"}
	addr := netip.MustParseAddr("192.0.2.1")
	tests := []struct {
		opts     string
		readOnly bool
	}{
		{"", false},
		{"ro", true},
		{"rw", false},
		{"ro,rw", false},
		{"rw,ro", true},
		{"ro,nolock,rw", false},
	}
	for _, tt := range tests {
		t.Run(tt.opts, func(t *testing.T) {
			spec, err := buildSpec("nfs", src, mustOptions(t, tt.opts), addr, netip.Addr{})
			if err != nil {
				t.Fatal(err)
			}
			if got := spec.Attrs&unix.MOUNT_ATTR_RDONLY != 0; got != tt.readOnly {
				t.Errorf("MOUNT_ATTR_RDONLY = %v, want %v", got, tt.readOnly)
			}
			// fsconfig applies the flags in order: the last ro/rw wins.
			sbRO := false
			for _, o := range spec.Params {
				switch {
				case o.Key == "ro" && !o.HasValue:
					sbRO = true
				case o.Key == "rw" && !o.HasValue:
					sbRO = false
				}
			}
			if sbRO != tt.readOnly {
				t.Errorf("superblock read-only from params %q = %v, want %v", spec.Params, sbRO, tt.readOnly)
			}
		})
	}
}

func TestWithVers(t *testing.T) {
	src := Source{Server: "192.0.2.1", Export: "/export"}
	addr := netip.MustParseAddr("192.0.2.1")
	tests := []struct {
		name   string
		opts   string
		client netip.Addr
		vers   string
		want   string
	}{
		{"v4.2 keeps derived clientaddr", "", netip.MustParseAddr("192.0.2.2"), "4.2", "source=192.0.2.1:/export,addr=192.0.2.1,clientaddr=192.0.2.2,vers=4.2"},
		{"v3 drops derived clientaddr", "", netip.MustParseAddr("192.0.2.2"), "3", "source=192.0.2.1:/export,addr=192.0.2.1,vers=3"},
		{"v3 drops user clientaddr", "clientaddr=203.0.113.5,nolock", netip.Addr{}, "3", "source=192.0.2.1:/export,addr=192.0.2.1,nolock,vers=3"},
		{"v4.0 keeps user clientaddr", "clientaddr=203.0.113.5", netip.Addr{}, "4.0", "source=192.0.2.1:/export,addr=192.0.2.1,clientaddr=203.0.113.5,vers=4.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := buildSpec("nfs", src, mustOptions(t, tt.opts), addr, tt.client)
			if err != nil {
				t.Fatal(err)
			}
			before := spec.Params.String()
			if got := spec.withVers(tt.vers).String(); got != tt.want {
				t.Errorf("withVers(%q) = %q, want %q", tt.vers, got, tt.want)
			}
			if after := spec.Params.String(); after != before {
				t.Errorf("withVers changed spec.Params from %q to %q", before, after)
			}
		})
	}
}

func TestNormalizeVers(t *testing.T) {
	for in, want := range map[string]string{
		"3": "3", "4": "4.0", "4.0": "4.0", "4.1": "4.1", "4.2": "4.2",
		"2": "", "4.3": "", "": "", "v4": "", " 4": "",
	} {
		if got := normalizeVers(in); got != want {
			t.Errorf("normalizeVers(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("plain"), 1},
		{ErrInvalidArgument, 3},
		{ErrTargetNotFound, 4},
		{ErrUnsafePath, 5},
		{ErrUnreachable, 6},
		{ErrMountFailed, 7},
		{ErrNotVerified, 8},
		{ErrTimeout, 9},
		{ErrNotMounted, 10},
	}
	for _, tt := range tests {
		name := "nil"
		if tt.err != nil {
			name = tt.err.Error()
		}
		t.Run(name, func(t *testing.T) {
			if got := ExitCode(tt.err); got != tt.want {
				t.Errorf("ExitCode(%v) = %d, want %d", tt.err, got, tt.want)
			}
			if tt.err == nil {
				return
			}
			wrapped := fmt.Errorf("x: %w", tt.err)
			if got := ExitCode(wrapped); got != tt.want {
				t.Errorf("ExitCode(%v) = %d, want %d", wrapped, got, tt.want)
			}
			classed := fmt.Errorf("y: %w", withClass(ErrMountFailed, tt.err))
			want := tt.want
			if want == 1 {
				want = 7 // an unclassified error takes the class given
			}
			if got := ExitCode(classed); got != want {
				t.Errorf("ExitCode(%v) = %d, want %d", classed, got, want)
			}
		})
	}
}

func TestWithClass(t *testing.T) {
	if withClass(ErrMountFailed, nil) != nil {
		t.Error("withClass(class, nil) != nil")
	}
	base := errors.New("fsconfig: bad option")
	err := withClass(ErrInvalidArgument, base)
	if !errors.Is(err, ErrInvalidArgument) || !errors.Is(err, base) {
		t.Errorf("withClass result %v does not wrap both the class and the error", err)
	}
	if err.Error() != base.Error() {
		t.Errorf("message = %q, want it unchanged: %q", err.Error(), base.Error())
	}
	// A class already present is kept rather than replaced.
	again := withClass(ErrMountFailed, fmt.Errorf("ctx: %w", err))
	if errors.Is(again, ErrMountFailed) || !errors.Is(again, ErrInvalidArgument) {
		t.Errorf("re-classed error %v: want only ErrInvalidArgument", again)
	}
}

func TestPreflightOf(t *testing.T) {
	src := Source{Server: "198.51.100.1", Export: "/export"}
	addr := netip.MustParseAddr("198.51.100.1")
	tests := []struct {
		name string
		opts string
		want routing.Preflight
	}{
		{"default", "", routing.Preflight{NFSPort: 2049}},
		{"v4", "vers=4.1", routing.Preflight{NFSPort: 2049}},
		{"port=", "port=2050", routing.Preflight{NFSPort: 2050}},
		{"port=0 means default", "port=0", routing.Preflight{NFSPort: 2049}},
		{"port not a number", "port=nfs", routing.Preflight{NFSPort: 2049}},
		{"port out of range", "port=70000", routing.Preflight{NFSPort: 2049}},
		{"v3 adds portmapper and mountd", "vers=3", routing.Preflight{NFSPort: 2049, V3: true}},
		{"v3 custom port", "vers=3,port=2050", routing.Preflight{NFSPort: 2050, V3: true}},
		{"v3 fixed mountport", "vers=3,mountport=20048", routing.Preflight{NFSPort: 2049, V3: true, MountPort: 20048}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := buildSpec("nfs", src, mustOptions(t, tt.opts), addr, netip.Addr{})
			if err != nil {
				t.Fatal(err)
			}
			tt.want.Timeout = DefaultProbeTimeout
			if got := preflightOf(spec, 0); got != tt.want {
				t.Errorf("preflightOf(%q) = %+v, want %+v", tt.opts, got, tt.want)
			}
		})
	}
}

func TestVolumeDevs(t *testing.T) {
	tests := []struct {
		name string
		text string
		want map[string]bool
	}{
		{
			name: "v4 and v3",
			text: "NV SERVER   PORT DEV          FSID                              FSC\n" +
				"v4 c6336401  801 0:52         a:0                               no\n" +
				"v3 c6336402  801 0:53         1:0                               no\n",
			want: map[string]bool{"0:52": true, "0:53": true},
		},
		{
			name: "header only",
			text: "NV SERVER   PORT DEV          FSID                              FSC\n",
			want: map[string]bool{},
		},
		{name: "empty", text: "", want: map[string]bool{}},
		{
			name: "no trailing newline, short line skipped",
			text: "NV SERVER   PORT DEV          FSID                              FSC\n" +
				"garbage\n" +
				"v4 20010db8000000000000000000000001  801 0:60         a:0    no",
			want: map[string]bool{"0:60": true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := volumeDevs([]byte(tt.text))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("volumeDevs = %v, want %v", got, tt.want)
			}
			if got["DEV"] {
				t.Error("header column name taken for a device")
			}
		})
	}
}
