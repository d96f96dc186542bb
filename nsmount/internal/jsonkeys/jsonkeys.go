// Package jsonkeys checks the keys of JSON objects as they are written,
// which encoding/json does not: it matches a key to a field in any case
// ("Allow" for "allow") and lets a key given twice silently override the
// first, so that two readers of one document can disagree on what it says.
// The strict parsers of untrusted input check the keys with it first.
package jsonkeys

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Check checks the JSON value in data: no object, at any depth, gives a
// key twice; the keys of the top object (everywhere false) or of every
// object (everywhere true) are in known, spelt exactly. A value that is
// not valid JSON passes: the decoder that follows refuses it with its own
// message.
func Check(data []byte, known map[string]bool, everywhere bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	err := value(dec, known, everywhere, true)
	var syntax *syntaxError
	if errors.As(err, &syntax) {
		return nil
	}
	return err
}

// syntaxError is invalid JSON, left to the decoder to report.
type syntaxError struct{ error }

// value reads one JSON value from dec and checks the objects in it.
func value(dec *json.Decoder, known map[string]bool, everywhere, top bool) error {
	tok, err := dec.Token()
	if err != nil {
		return &syntaxError{err}
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return &syntaxError{err}
			}
			key, _ := tok.(string)
			switch {
			case (top || everywhere) && known != nil && !known[key]:
				return fmt.Errorf("unknown field %q", key)
			case seen[key]:
				return fmt.Errorf("field %q given more than once", key)
			}
			seen[key] = true
			if err := value(dec, known, everywhere, false); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return &syntaxError{err}
		}
	case json.Delim('['):
		for dec.More() {
			if err := value(dec, known, everywhere, false); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return &syntaxError{err}
		}
	}
	return nil
}
