package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestParseBench(t *testing.T) {
	out := "noise\n[ 1.2] BENCH\tnsmount mount v4.2\t20\t78000000\t65000000\t78100000\t92000000\nBENCH\tnsenter + mount.nfs v4.2\t20\t120000000\t113000000\t117000000\t163000000\n"
	res, err := parseBench(out)
	if err != nil || len(res) != 2 {
		t.Fatalf("parseBench = %v, %v", res, err)
	}
	if res[0].name != "nsmount mount v4.2" || res[0].n != 20 || res[0].med != 78100*time.Microsecond {
		t.Errorf("first result = %+v", res[0])
	}
	var buf bytes.Buffer
	if err := printBench(&buf, res); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "nsmount mount v4.2") || !strings.Contains(buf.String(), ": 0.67 (medians)") {
		t.Errorf("printBench output:\n%s", buf.String())
	}
	for _, bad := range []string{"BENCH\tx\t1\t2", "BENCH\tx\tone\t1\t1\t1\t1"} {
		if _, err := parseBench(bad); err == nil {
			t.Errorf("parseBench(%q) succeeded", bad)
		}
	}
	if err := printBench(&buf, nil); err == nil {
		t.Error("printBench(nil) succeeded")
	}
}
