package nsmount

import (
	"regexp"
	"testing"
)

func TestNewIdentity(t *testing.T) {
	uuid4 := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		id := newIdentity()
		if !uuid4.MatchString(id) {
			t.Fatalf("newIdentity() = %q, not a version 4 UUID", id)
		}
		if seen[id] {
			t.Fatalf("newIdentity() repeated %q", id)
		}
		seen[id] = true
	}
}
