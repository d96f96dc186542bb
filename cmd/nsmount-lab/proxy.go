package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/nsmount/nsmount/testenv"
	"github.com/spf13/cobra"
)

// proxyCmd is `nsmount-lab proxy`: a TCP proxy that freezes the
// connections it carries on SIGUSR1 (testenv.Proxy), run in the guest by
// lab_proxy.
func proxyCmd() *cobra.Command {
	var listen, to string
	c := &cobra.Command{
		Use:   "proxy --listen ADDR:PORT --to ADDR:PORT",
		Short: "Forward TCP connections; SIGUSR1 freezes those open then",
		Long: `Forward every TCP connection made to --listen to --to, until killed.
SIGUSR1 freezes the connections open at that moment: they stay open and
forward nothing more, either way; later connections are forwarded as usual.
"proxy: ready" is printed to stderr once listening, "proxy: froze N" after
each SIGUSR1.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			p, err := testenv.ListenProxy(listen, to)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			usr1 := make(chan os.Signal, 1)
			signal.Notify(usr1, syscall.SIGUSR1)
			defer signal.Stop(usr1)
			go func() {
				for range usr1 {
					fmt.Fprintf(os.Stderr, "proxy: froze %d\n", p.Freeze())
				}
			}()
			fmt.Fprintf(os.Stderr, "proxy: ready on %s to %s\n", p.Addr(), to)
			if err := p.Serve(c.Context()); err != nil {
				return &exitError{code: 1, err: err}
			}
			return nil
		},
	}
	c.Flags().StringVar(&listen, "listen", "", "ADDR:PORT to listen on")
	c.Flags().StringVar(&to, "to", "", "ADDR:PORT to forward to")
	c.MarkFlagRequired("listen")
	c.MarkFlagRequired("to")
	return c
}
