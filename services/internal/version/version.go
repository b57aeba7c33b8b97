// Package version reports Ferry's release and the commit it was built from.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Release is Ferry's version, bumped at release time.
const Release = "0.1.0"

// String returns "0.1.0 (commit abc1234, go1.26.8)" for --version.
func String() string {
	rev := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 7 {
				rev = s.Value[:7]
			}
		}
	}
	return fmt.Sprintf("%s (commit %s, %s)", Release, rev, runtime.Version())
}
