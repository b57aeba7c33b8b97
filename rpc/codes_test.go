package rpc

import (
	"errors"
	"fmt"
	"testing"
)

// Every error of the registry crosses the bus: its code goes out, and the
// caller's errors.Is finds the same sentinel in the RemoteError.
func TestErrorCodeRegistry(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range codes {
		re := ToRemoteError(fmt.Errorf("handler: %w", c.err))
		if re.Code != c.code {
			t.Errorf("%v: code %q, want %q", c.err, re.Code, c.code)
		}
		if seen[c.code] {
			continue // an alias (ErrMalformed is sent as invalid)
		}
		seen[c.code] = true
		if !errors.Is(re, c.err) {
			t.Errorf("code %q: errors.Is does not find %v", c.code, c.err)
		}
		for _, other := range codes {
			if other.code != c.code && errors.Is(re, other.err) {
				t.Errorf("code %q also matches %v", c.code, other.err)
			}
		}
	}
	if re := ToRemoteError(errors.New("plain")); re.Code != CodeInternal {
		t.Errorf("an unknown error: %q", re.Code)
	}
}
