package cachectl

import (
	"slices"
	"testing"
	"time"

	"github.com/nsmount/nsmount/cachectl/registry"
)

// A server change makes every mount of its address stale, one probe after
// another: the first stale mount has the others probed at once, the
// next ones ask only for those not known to have worked since (not the
// remounted ones, not those already probed or remounting), and a mount
// that worked after the change and is then stale starts a new wave.
func TestStaleWave(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	w := newWatcher(nil, WatchOptions{}, nil)
	add := func(id, addr string, goodAt time.Time) *watched {
		mt := &watched{e: registry.Entry{ID: id, Address: addr}, goodAt: goodAt}
		w.mounts[id] = mt
		return mt
	}
	ids := func(ms []*watched) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.e.ID)
		}
		slices.Sort(out)
		return out
	}
	a := add("a", "198.51.100.1", t0)
	b := add("b", "198.51.100.1", t0)
	c := add("c", "198.51.100.1", t0)
	d := add("d", "198.51.100.1", t0)
	add("other", "203.0.113.10", t0)

	// The switch at t0+10s; a is found stale at t0+12s: all others.
	now := t0.Add(12 * time.Second)
	if got := ids(w.staleWave(a, now)); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Fatalf("first stale: %v, want [b c d]", got)
	}
	// b probing, c remounting, a remounted (a new mount, made after the
	// change was seen): d alone, when b turns out stale.
	b.probing, c.remounting = true, true
	delete(w.mounts, "a")
	add("a2", "198.51.100.1", now.Add(time.Second))
	b.probing = false
	if got := ids(w.staleWave(b, now.Add(2*time.Second))); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("second stale: %v, want [d]", got)
	}
	// d probed good after the change (a mount of the new server already):
	// no one left to ask for.
	d.goodAt = now.Add(3 * time.Second)
	c.remounting = false
	c.goodAt = now.Add(4 * time.Second)
	if got := ids(w.staleWave(b, now.Add(5*time.Second))); len(got) != 0 {
		t.Fatalf("stale again in the same wave: %v, want none", got)
	}
	// A minute later d, good after the first change, is stale: another
	// change, everyone not known good since is asked for.
	later := now.Add(time.Minute)
	if got := ids(w.staleWave(d, later)); !slices.Equal(got, []string{"a2", "b", "c"}) {
		t.Fatalf("new wave: %v, want [a2 b c]", got)
	}
}
