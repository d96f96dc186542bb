// Package nriconn keeps one NRI plugin registered with the container
// runtime for as long as its caller runs: it connects to the runtime's NRI
// socket, registers the plugin under its name and index, serves the
// plugin's handler (an object with the NRI stub's event methods), and when
// the runtime goes away (a restart, or a plugin it dropped for a slow
// answer) connects and registers again, with backoff. The runtime then
// synchronizes the plugin with the pods and containers it has, which is
// where the handler catches up on what it missed. The runtime allows one
// registration per plugin name, so one process serves all of its NRI work
// through one Conn.
package nriconn

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/nsmount/integration/internal/report"
)

// Defaults of a Config.
const (
	// DefaultMinDelay is the wait before the second attempt to connect
	// after a connection ends (the first is at once); each failed attempt
	// doubles it, up to DefaultMaxDelay.
	DefaultMinDelay = 100 * time.Millisecond
	// DefaultMaxDelay bounds the wait between two attempts: a runtime
	// back after a restart is found within it.
	DefaultMaxDelay = 2 * time.Second
	// DefaultRegisterTimeout bounds one attempt: connecting, registering
	// and being configured by the runtime.
	DefaultRegisterTimeout = 2 * stub.DefaultRegistrationTimeout
	// stillFailingEvery is how often a run of failed attempts is logged
	// again.
	stillFailingEvery = time.Minute
)

// Config configures a Conn.
type Config struct {
	// Socket is the runtime's NRI socket (a clean absolute path).
	Socket string
	// Name and Idx are what the plugin registers as: a name and two
	// digits.
	Name, Idx string
	// MinDelay, MaxDelay and RegisterTimeout: see the defaults (zero
	// takes them).
	MinDelay, MaxDelay, RegisterTimeout time.Duration
	// Logger receives the connection's changes and the stub's warnings;
	// nil discards them.
	Logger *slog.Logger
}

// State is a Conn's connection, as State reports it.
type State struct {
	// Connected: registered and configured, serving the runtime's events.
	Connected bool `json:"connected"`
	// Since is when the plugin registered (Connected) or the connection
	// was lost, or the Conn started.
	Since time.Time `json:"since"`
	// Registrations counts the registrations so far.
	Registrations int `json:"registrations"`
	// Failures counts the attempts that failed since the last
	// registration (or the start), LastError the last one's error.
	Failures  int    `json:"failures"`
	LastError string `json:"last_error,omitempty"`
	// RuntimeNRI is the NRI version of the runtime last registered with.
	RuntimeNRI string `json:"runtime_nri,omitempty"`
}

// Conn is one plugin's registration with the runtime.
type Conn struct {
	handler any
	c       Config
	log     *slog.Logger

	mu sync.Mutex
	st State
}

// New returns a Conn for handler, whose methods (those of the stub's
// interfaces it implements: stub.CreateContainerInterface...) serve the
// runtime's events. A handler with no such method, or a bad name or
// index, is nsmount.ErrInvalidArgument.
func New(handler any, c Config) (*Conn, error) {
	if c.MinDelay <= 0 {
		c.MinDelay = DefaultMinDelay
	}
	if c.MaxDelay < c.MinDelay {
		c.MaxDelay = max(DefaultMaxDelay, c.MinDelay)
	}
	if c.RegisterTimeout <= 0 {
		c.RegisterTimeout = DefaultRegisterTimeout
	}
	if !filepath.IsAbs(c.Socket) || filepath.Clean(c.Socket) != c.Socket {
		return nil, nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("nri socket %q: want a clean absolute path", c.Socket))
	}
	if err := api.CheckPluginIndex(c.Idx); err != nil || c.Name == "" || strings.ContainsFunc(c.Name, func(r rune) bool { return r <= ' ' || r == '/' || r == 0x7f }) {
		return nil, nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("nri plugin index %q and name %q: want two digits and a name", c.Idx, c.Name))
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cn := &Conn{handler: handler, c: c, log: log, st: State{Since: time.Now()}}
	if _, err := stub.New(handler, cn.options(nil, nil)...); err != nil {
		return nil, nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("nri plugin: %s", report.OneLine(err.Error())))
	}
	return cn, nil
}

// State returns the connection's state now.
func (cn *Conn) State() State {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.st
}

// Run keeps the plugin registered until ctx ends: it connects, and
// whenever the connection fails or ends, connects again after a delay that
// starts at MinDelay and doubles up to MaxDelay while attempts fail (the
// first attempt after a registered connection ends is made at once); a
// delay ends early when the socket is made anew in its directory (inotify). When
// ctx ends it closes the connection and returns nil: the runtime then
// forgets the plugin, and events that come later reach it no more. Calls
// of the handler still running are not waited for.
func (cn *Conn) Run(ctx context.Context) error {
	delay := time.Duration(0)
	var failingSince, lastLogged time.Time
	w := newSocketWatch(cn.c.Socket)
	defer w.close()
	for {
		if delay > 0 {
			w.wait(ctx, delay)
		}
		if ctx.Err() != nil {
			return nil
		}
		registered, err := cn.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		now := time.Now()
		if registered {
			// The runtime closed a working connection: most likely it
			// restarts. Try again at once, then back off.
			cn.log.Warn("the runtime closed the NRI connection: connecting again", "socket", cn.c.Socket)
			delay, failingSince, lastLogged = 0, now, now
			continue
		}
		cn.mu.Lock()
		cn.st.Failures++
		cn.st.LastError = report.OneLine(err.Error())
		failures := cn.st.Failures
		cn.mu.Unlock()
		switch {
		case failingSince.IsZero():
			failingSince, lastLogged = now, now
			cn.log.Warn("cannot register with the runtime: trying again", "socket", cn.c.Socket, "error", report.OneLine(err.Error()))
		case now.Sub(lastLogged) >= stillFailingEvery:
			lastLogged = now
			cn.log.Warn("still not registered with the runtime", "socket", cn.c.Socket, "for", now.Sub(failingSince).Round(time.Second).String(),
				"attempts", failures, "error", report.OneLine(err.Error()))
		}
		delay = min(max(2*delay, cn.c.MinDelay), cn.c.MaxDelay)
	}
}

// session connects, registers and serves until the connection ends or ctx
// does. registered says the plugin was registered and configured.
func (cn *Conn) session(ctx context.Context) (registered bool, err error) {
	closed := make(chan struct{})
	var once sync.Once
	var (
		connMu sync.Mutex
		conn   net.Conn
	)
	dial := func(socket string) (net.Conn, error) {
		d := net.Dialer{Timeout: cn.c.RegisterTimeout}
		c, err := d.DialContext(ctx, "unix", socket)
		if err != nil {
			return nil, err
		}
		connMu.Lock()
		conn = c
		connMu.Unlock()
		return c, nil
	}
	abandon := func() {
		connMu.Lock()
		if conn != nil {
			conn.Close()
		}
		connMu.Unlock()
	}
	s, err := stub.New(cn.handler, cn.options(dial, func() { once.Do(func() { close(closed) }) })...)
	if err != nil {
		return false, err
	}
	// The stub waits for the runtime's Configure without a bound: a
	// runtime that goes away between registering the plugin and
	// configuring it would keep Start from returning.
	started := make(chan error, 1)
	go func() { started <- s.Start(ctx) }()
	t := time.NewTimer(cn.c.RegisterTimeout)
	defer t.Stop()
	select {
	case err := <-started:
		if err != nil {
			return false, StartError(cn.c.Socket, err)
		}
	case <-t.C:
		abandon()
		return false, nsmount.WithClass(nsmount.ErrTimeout, fmt.Errorf("register with the runtime at %s: no answer in %s", cn.c.Socket, cn.c.RegisterTimeout))
	case <-ctx.Done():
		abandon()
		return false, ctx.Err()
	}
	now := time.Now()
	cn.mu.Lock()
	downtime := now.Sub(cn.st.Since)
	cn.st = State{Connected: true, Since: now, Registrations: cn.st.Registrations + 1, RuntimeNRI: s.RuntimeNRIVersion()}
	n := cn.st.Registrations
	cn.mu.Unlock()
	attrs := []any{"plugin", cn.c.Idx + "-" + cn.c.Name, "socket", cn.c.Socket, "nri", s.RuntimeNRIVersion()}
	if n > 1 {
		attrs = append(attrs, "registrations", n, "after", downtime.Round(time.Millisecond).String())
	}
	cn.log.Info("registered with the runtime", attrs...)
	select {
	case <-ctx.Done():
		s.Stop()
	case <-closed:
	}
	cn.mu.Lock()
	cn.st.Connected, cn.st.Since = false, time.Now()
	cn.mu.Unlock()
	return true, nil
}

// options are the stub's options for a connection made with dial (nil:
// the stub's own), whose end calls onClose.
func (cn *Conn) options(dial func(string) (net.Conn, error), onClose func()) []stub.Option {
	opts := []stub.Option{
		stub.WithSocketPath(cn.c.Socket),
		stub.WithPluginName(cn.c.Name),
		stub.WithPluginIdx(cn.c.Idx),
		stub.WithLogger(StubLogger(cn.log)),
	}
	if dial != nil {
		opts = append(opts, stub.WithDialer(dial))
	}
	if onClose != nil {
		opts = append(opts, stub.WithOnClose(onClose))
	}
	return opts
}
