package jsonkeys_test

import (
	"strings"
	"testing"

	"github.com/nsmount/nsmount/nsmount/internal/jsonkeys"
)

func TestCheck(t *testing.T) {
	known := map[string]bool{"version": true, "allow": true, "name": true}
	for _, tc := range []struct {
		name, in   string
		everywhere bool
		want       string // "" passes, else a substring of the error
	}{
		{"good", `{"version": 1, "allow": [{"name": "a"}]}`, true, ""},
		{"case", `{"Version": 1}`, false, `unknown field "Version"`},
		{"case-nested", `{"allow": [{"Name": "a"}]}`, true, `unknown field "Name"`},
		{"nested-free", `{"allow": [{"Name": "a"}]}`, false, ""},
		{"twice", `{"allow": [], "allow": [{"name": "a"}]}`, false, `field "allow" given more than once`},
		{"twice-nested-free", `{"allow": {"x": 1, "x": 2}}`, false, `field "x" given more than once`},
		{"twice-in-list", `{"allow": [{"name": "a", "name": "b"}]}`, true, `field "name" given more than once`},
		{"not-json", `{"allow": `, true, ""},
		{"not-object", `[1, {"a": 1, "a": 2}]`, false, `field "a" given more than once`},
		{"scalar", `"x"`, true, ""},
		{"empty", ``, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := jsonkeys.Check([]byte(tc.in), known, tc.everywhere)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Check(%s) = %v, want %q", tc.in, err, tc.want)
			}
		})
	}
	if err := jsonkeys.Check([]byte(`{"any": {"b": 1}, "b": 2}`), nil, true); err != nil {
		t.Errorf("without known keys: %v", err)
	}
}
