package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// getCmd is `nsmount-lab get`: a plain HTTP GET for lab scenarios (the
// guest's static busybox wget crashes: its resolver needs glibc's NSS).
func getCmd() *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "get [--timeout D] URL",
		Short: "GET URL and print the body; exit 1 unless the answer is 200 within --timeout",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			defer resp.Body.Close()
			if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
				return &exitError{code: 1, err: err}
			}
			if resp.StatusCode != http.StatusOK {
				return &exitError{code: 1, err: fmt.Errorf("%s: %s", args[0], resp.Status)}
			}
			return nil
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "bound for the whole request")
	return c
}
