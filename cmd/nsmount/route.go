package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nsmount/nsmount/nsmount"
	"github.com/nsmount/nsmount/routing/resolver"
	"github.com/spf13/cobra"
)

func newRouteCommand() *cobra.Command {
	var (
		tf     targetFlags
		rf     requestFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "route [flags] SERVER[:/EXPORT]",
		Short: "Explain how the container would reach SERVER, and what nsmount would mount",
		Long: `route makes the same decision as mount, without mounting: it resolves SERVER
as the container resolves it, looks up the route to each address inside its
network namespace, runs the reachability checks, and prints the mount
parameters nsmount would pass to the kernel. It exits like mount would fail.`,
		Example: `  nsmount route --pid 4242 nfs.example.test
  nsmount route --pid 4242 -o vers=3 --json nfs.example.test:/export`,
		Args: exactArgs(1, "SERVER[:/EXPORT]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			arg := args[0]
			if !strings.Contains(arg, ":/") {
				if strings.Contains(arg, ":") && !strings.HasPrefix(arg, "[") {
					arg = "[" + arg + "]"
				}
				arg += ":/"
			}
			req, err := rf.request(arg)
			if err != nil {
				return err
			}
			t, err := tf.open(cmd)
			if err != nil {
				return err
			}
			defer t.Close()
			plan, perr := nsmount.Explain(cmd.Context(), t, req)
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), plan); err != nil {
					return err
				}
			} else {
				writePlan(cmd.OutOrStdout(), plan)
			}
			return perr
		},
	}
	tf.register(cmd)
	rf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the decision as JSON")
	return cmd
}

// writePlan prints a plan for a person: what was asked, what answered, which
// route, which checks, what the kernel would get.
func writePlan(out io.Writer, p *nsmount.Plan) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer w.Flush()
	fmt.Fprintf(w, "target\t%s (netns %d, mntns %d)\n", p.Target, p.NetNS, p.MountNS)
	fmt.Fprintf(w, "source\t%s\n", p.Source)
	if c := p.Resolver; c != nil {
		ns := make([]string, len(c.Nameservers))
		for i, n := range c.Nameservers {
			ns[i] = n.String()
		}
		fmt.Fprintf(w, "resolver\t%s: nameservers %s; search %s; ndots %d; timeout %v; attempts %d; rotate %v\n",
			p.ResolveFrom, dash(strings.Join(ns, " ")), dash(strings.Join(c.Search, " ")), c.Ndots, c.Timeout, c.Attempts, c.Rotate)
	}
	if r := p.Resolution; r != nil {
		how := r.Source
		if r.Source == "dns" {
			how += " " + r.Server.String()
		}
		fmt.Fprintf(w, "resolved\t%s -> %s (%s, as %s)\n", r.Name, dash(joinAddrs(r)), how, dash(r.FQDN))
		for _, q := range r.Queries {
			fmt.Fprintf(w, "  query\t%s %s @%s %s: %s (%v)\n", q.Type, q.Name, q.Server, q.Transport, q.Result, q.RTT.Round(time.Microsecond))
		}
	}
	fmt.Fprintf(w, "family\t%s\n", p.Family)
	for _, c := range p.Candidates {
		verdict := "chosen"
		if !c.Chosen {
			verdict = "rejected: " + dash(c.Rejected)
		}
		route := "no route"
		if c.Route != nil {
			route = c.Route.String()
		}
		fmt.Fprintf(w, "candidate\t%s: %s\n", c.Addr, verdict)
		fmt.Fprintf(w, "  route\t%s\n", route)
		for _, ch := range c.Checks {
			res := "ok"
			if !ch.OK {
				res = ch.Error
			}
			fmt.Fprintf(w, "  check\t%s: %s (%v)\n", ch.What, res, ch.Took.Round(time.Microsecond))
		}
	}
	if p.Route != nil {
		fmt.Fprintf(w, "route\t%s (table %d)\n", p.Route, p.Route.Table)
		fmt.Fprintf(w, "mount\t-t %s, versions %s\n", p.FSType, strings.Join(p.Versions, ", "))
		fmt.Fprintf(w, "params\t%s\n", p.Params)
	}
	if p.Error != "" {
		fmt.Fprintf(w, "error\t%s\n", p.Error)
	}
}

func joinAddrs(r *resolver.Resolution) string {
	s := make([]string, len(r.Addrs))
	for i, a := range r.Addrs {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}
