package admission

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/nsmount/nsmount/nsmount"
)

// MountsAnnotation is the OCI annotation in which a container's own spec
// asks for NFS mounts: a JSON list of objects
//
//	[{"server": "nfs.example.test", "export": "/export/a", "target": "/data",
//	  "type": "nfs4", "options": "vers=4.2,ro", "required": true, "mkdir": true}]
//
// server, export and target are required; type is "nfs" (default) or
// "nfs4"; options use mount.nfs(8) syntax; required defaults to true; mkdir
// to false. Annotations come from whoever wrote the container's spec: they
// are parsed strictly (ParseMountsAnnotation) and then checked against the
// host's Policy.
const MountsAnnotation = "nsmount.io/mounts"

// Bounds of a mounts annotation.
const (
	// MaxAnnotationSize is the largest annotation value accepted, in bytes.
	MaxAnnotationSize = 64 << 10
	// MaxAnnotationMounts is the largest number of mounts one annotation
	// may ask for.
	MaxAnnotationMounts = 16
	// maxPathLen bounds export and target paths (PATH_MAX).
	maxPathLen = 4096
)

// VolumeRequest is one mount asked for in a container's annotation, parsed
// and validated but not yet allowed by any policy.
type VolumeRequest struct {
	// Index is the entry's position in the annotation's list (from 0).
	Index int
	// Source is the server and export.
	Source nsmount.Source
	// FSType is "nfs" or "nfs4".
	FSType string
	// Options are the mount options asked for.
	Options nsmount.Options
	// Target is the mount point inside the container: absolute and clean.
	Target string
	// Required makes a failure of this mount fail the container; an
	// optional mount that fails is skipped with a warning.
	Required bool
	// Mkdir creates a missing target directory inside the container.
	Mkdir bool
}

// String describes the request for messages: "SERVER:/EXPORT on TARGET".
func (v VolumeRequest) String() string {
	return v.Source.String() + " on " + v.Target
}

// Request returns the mount request that v asks for, resolved from the
// container. It is what the container asked, unchecked: Policy.Check
// returns the request to mount instead.
func (v VolumeRequest) Request() nsmount.Request {
	return nsmount.Request{
		Source:      v.Source,
		FSType:      v.FSType,
		Options:     slices.Clone(v.Options),
		Target:      v.Target,
		Mkdir:       v.Mkdir,
		ResolveFrom: nsmount.ResolveFromContainer,
	}
}

// annotationFields are the keys an entry may have, with their JSON type.
var annotationFields = map[string]string{
	"server":   "string",
	"export":   "string",
	"target":   "string",
	"type":     "string",
	"options":  "string",
	"required": "boolean",
	"mkdir":    "boolean",
}

// ParseMountsAnnotation parses the value of a MountsAnnotation. It is
// strict: a value that is not one JSON list of objects, an unknown,
// misspelt (keys are case-sensitive) or repeated key, a value of the wrong
// type, a missing server, export or target, more than MaxAnnotationMounts
// entries, more than MaxAnnotationSize bytes, data after the list, an
// invalid server, export, option or target (not absolute and clean, or "/"),
// or two entries with the same target are all refused with nsmount.ErrInvalidArgument
// and a one-line message naming the entry and field, e.g.
// `nsmount.io/mounts[1].export: "a/b": must be an absolute path`.
func ParseMountsAnnotation(value string) ([]VolumeRequest, error) {
	if len(value) > MaxAnnotationSize {
		return nil, annotationError(-1, "", fmt.Errorf("%d bytes, more than the limit of %d", len(value), MaxAnnotationSize))
	}
	dec := json.NewDecoder(strings.NewReader(value))
	dec.UseNumber()
	if err := expectDelim(dec, '[', "a JSON list of mounts"); err != nil {
		return nil, annotationError(-1, "", err)
	}
	var out []VolumeRequest
	targets := map[string]int{}
	for dec.More() {
		i := len(out)
		if i == MaxAnnotationMounts {
			return nil, annotationError(-1, "", fmt.Errorf("more than %d mounts", MaxAnnotationMounts))
		}
		fields, err := decodeEntry(dec)
		if err != nil {
			return nil, annotationError(i, err.field, err.err)
		}
		v, ferr := validateEntry(i, fields)
		if ferr != nil {
			return nil, annotationError(i, ferr.field, ferr.err)
		}
		if j, dup := targets[v.Target]; dup {
			return nil, annotationError(i, "target", fmt.Errorf("%q: already the target of entry %d", v.Target, j))
		}
		targets[v.Target] = i
		out = append(out, v)
	}
	if err := expectDelim(dec, ']', "the end of the list"); err != nil {
		return nil, annotationError(-1, "", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, annotationError(-1, "", errors.New("unexpected data after the list"))
	}
	return out, nil
}

// fieldError is an error in one field of an entry ("" for the entry).
type fieldError struct {
	field string
	err   error
}

// annotationError formats an error located at entry i (-1: the whole value)
// and field as "nsmount.io/mounts[i].field: err".
func annotationError(i int, field string, err error) error {
	where := MountsAnnotation
	if i >= 0 {
		where += fmt.Sprintf("[%d]", i)
	}
	if field != "" {
		where += "." + field
	}
	return nsmount.WithClass(nsmount.ErrInvalidArgument, fmt.Errorf("%s: %w", where, err))
}

// expectDelim reads one token and checks that it is the delimiter d.
func expectDelim(dec *json.Decoder, d json.Delim, what string) error {
	tok, err := dec.Token()
	if err != nil {
		return jsonError(dec, err)
	}
	if tok != d {
		return fmt.Errorf("want %s, found %s at byte %d", what, describeToken(tok), dec.InputOffset())
	}
	return nil
}

// jsonError turns a decoder error into a one-line error with its position.
func jsonError(dec *json.Decoder, err error) error {
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("unexpected end of JSON")
	}
	var serr *json.SyntaxError
	if errors.As(err, &serr) {
		return fmt.Errorf("invalid JSON at byte %d: %s", serr.Offset, serr.Error())
	}
	return fmt.Errorf("invalid JSON at byte %d: %w", dec.InputOffset(), err)
}

func describeToken(tok json.Token) string {
	switch t := tok.(type) {
	case json.Delim:
		return fmt.Sprintf("%q", string(t))
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%v", tok)
}

// decodeEntry reads one entry object, checking its keys (known, exact case,
// no repeats) and the JSON type of each value.
func decodeEntry(dec *json.Decoder) (map[string]any, *fieldError) {
	if err := expectDelim(dec, '{', "an object"); err != nil {
		return nil, &fieldError{err: err}
	}
	fields := map[string]any{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, &fieldError{err: jsonError(dec, err)}
		}
		key, _ := tok.(string)
		want, known := annotationFields[key]
		if !known {
			return nil, &fieldError{err: fmt.Errorf("unknown field %q (want %s)", key, knownFields())}
		}
		if _, dup := fields[key]; dup {
			return nil, &fieldError{field: key, err: errors.New("given more than once")}
		}
		val, err := dec.Token()
		if err != nil {
			return nil, &fieldError{field: key, err: jsonError(dec, err)}
		}
		switch val.(type) {
		case string:
			if want == "string" {
				fields[key] = val
				continue
			}
		case bool:
			if want == "boolean" {
				fields[key] = val
				continue
			}
		}
		return nil, &fieldError{field: key, err: fmt.Errorf("want a %s, found %s", want, describeToken(val))}
	}
	if err := expectDelim(dec, '}', "the end of the object"); err != nil {
		return nil, &fieldError{err: err}
	}
	return fields, nil
}

func knownFields() string {
	keys := make([]string, 0, len(annotationFields))
	for k := range annotationFields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

// validateEntry checks the values of entry i and builds its request.
func validateEntry(i int, fields map[string]any) (VolumeRequest, *fieldError) {
	str := func(k string) string { s, _ := fields[k].(string); return s }
	v := VolumeRequest{Index: i, FSType: "nfs", Required: true}
	for _, k := range []string{"server", "export", "target"} {
		if _, ok := fields[k]; !ok {
			return v, &fieldError{field: k, err: errors.New("missing")}
		}
	}
	server, export, target := str("server"), str("export"), str("target")
	if err := CheckServer(server); err != nil {
		return v, &fieldError{field: "server", err: fmt.Errorf("%q: %w", server, err)}
	}
	if err := CheckPath(export); err != nil {
		return v, &fieldError{field: "export", err: fmt.Errorf("%q: %w", export, err)}
	}
	src := server + ":" + export
	if a, err := netip.ParseAddr(server); err == nil && a.Is6() {
		src = "[" + server + "]:" + export
	}
	var err error
	if v.Source, err = nsmount.ParseSource(src); err != nil {
		return v, &fieldError{field: "export", err: err}
	}
	if t, ok := fields["type"]; ok {
		v.FSType = t.(string)
		if v.FSType != "nfs" && v.FSType != "nfs4" {
			return v, &fieldError{field: "type", err: fmt.Errorf("%q: want nfs or nfs4", v.FSType)}
		}
	}
	if v.Options, err = nsmount.ParseOptions(str("options")); err != nil {
		return v, &fieldError{field: "options", err: err}
	}
	// Everything that the mount would refuse later is refused now, with
	// the entry named: reserved options, bad versions, nfs4 with vers=3.
	if err := nsmount.ValidateMount(v.FSType, v.Source, v.Options); err != nil {
		return v, &fieldError{field: "options", err: err}
	}
	if err := CheckPath(target); err != nil {
		return v, &fieldError{field: "target", err: fmt.Errorf("%q: %w", target, err)}
	}
	if target == "/" {
		return v, &fieldError{field: "target", err: errors.New(`"/": mounting over the container's root is not allowed`)}
	}
	v.Target = target
	if r, ok := fields["required"]; ok {
		v.Required = r.(bool)
	}
	if m, ok := fields["mkdir"]; ok {
		v.Mkdir = m.(bool)
	}
	return v, nil
}

// CheckServer accepts an NFS server as a mount request names it: a host
// name or an IP literal (IPv6 without brackets, without a zone: a request
// names a network, not a link). The mounts annotation and the CSI volume
// context check their server with it.
func CheckServer(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case strings.HasPrefix(s, "["):
		return errors.New("IPv6 address must be given without brackets")
	}
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return errors.New("zoned address: name a network, not a link")
		}
		return nil
	}
	if strings.Contains(s, ":") {
		return errors.New("not an IP address")
	}
	if !nsmount.ValidHostname(s) {
		return errors.New("neither an IP address nor a host name")
	}
	return nil
}

// CheckPath accepts a path as a mount request names an export or a target:
// absolute, in canonical form (no empty, "." or ".." components, no
// trailing slash), valid UTF-8 without control characters, at most 4096
// bytes.
func CheckPath(p string) error {
	switch {
	case p == "":
		return errors.New("empty")
	case len(p) > maxPathLen:
		return fmt.Errorf("longer than %d bytes", maxPathLen)
	case !utf8.ValidString(p) || strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return errors.New("control character or invalid UTF-8")
	case !strings.HasPrefix(p, "/"):
		return errors.New("must be an absolute path")
	case path.Clean(p) != p:
		return fmt.Errorf("must be a clean path (%q)", path.Clean(p))
	}
	return nil
}
