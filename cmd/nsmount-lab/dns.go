package main

import (
	"fmt"
	"os"

	"github.com/nsmount/nsmount/testenv"
	"github.com/spf13/cobra"
)

// dnsCmd is `nsmount-lab dns`: a DNS server for lab scenarios, run in the
// guest by lab_dns.
func dnsCmd() *cobra.Command {
	var cfg testenv.DNSConfig
	c := &cobra.Command{
		Use:   "dns --listen ADDR:PORT [--listen ...] [--tcp-only|--truncate] [--silent] NAME=IP|NAME=TARGET...",
		Short: "Serve A/AAAA records for the given names until killed",
		Long: `Serve A and AAAA records for the given names, over UDP and TCP, on every
--listen address, until killed. Names are case-insensitive; repeat a name for
several addresses; NAME=TARGET (TARGET not an IP address) makes NAME a CNAME.
Other names get NXDOMAIN. --truncate sets TC (and no records) on every UDP
answer, --tcp-only opens no UDP socket, --silent never answers.
"dns: ready" is printed to stderr once the sockets are open; one line per query follows.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if cfg.TCPOnly && cfg.Truncate {
				return fmt.Errorf("--tcp-only and --truncate exclude each other")
			}
			if err := testenv.ParseDNSRecords(&cfg, args); err != nil {
				return err
			}
			cfg.Log = os.Stderr
			err := testenv.ServeDNS(c.Context(), cfg, func() {
				fmt.Fprintf(os.Stderr, "dns: ready on %v\n", cfg.Listen)
			})
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			return nil
		},
	}
	c.Flags().StringArrayVar(&cfg.Listen, "listen", nil, "ADDR:PORT to serve on (UDP and TCP), repeatable")
	c.Flags().BoolVar(&cfg.TCPOnly, "tcp-only", false, "serve TCP only")
	c.Flags().BoolVar(&cfg.Truncate, "truncate", false, "set TC on every UDP answer")
	c.Flags().BoolVar(&cfg.Silent, "silent", false, "never answer")
	c.MarkFlagRequired("listen")
	return c
}
