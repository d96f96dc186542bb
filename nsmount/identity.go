package nsmount

import (
	"crypto/rand"
	"fmt"

	"github.com/nsmount/nsmount/nsmount/netsysfs"
)

// ensureClientIdentity gives the calling thread's network namespace a unique
// NFSv4 client identity unless it has one. Without it, every netns whose
// hostname is the same sends the same client ID ("Linux NFSv4.2 HOST"), and
// the server drops one client whenever the other renews its lease.
//
// An identity already set (by nsmount earlier, or by the administrator) is
// kept. It returns the identity in force, and whether this call set it;
// ("", false, nil) when the kernel has no per-netns identifier.
func ensureClientIdentity() (id string, set bool, err error) {
	fs, err := netsysfs.Open()
	if err != nil {
		return "", false, err
	}
	defer fs.Close()
	cur, ok, err := fs.Identity()
	if err != nil || !ok || cur != "" {
		return cur, false, err
	}
	id = newIdentity()
	if err := fs.SetIdentity(id); err != nil {
		return "", false, err
	}
	return id, true, nil
}

// newIdentity returns a random UUID (version 4) string.
func newIdentity() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
