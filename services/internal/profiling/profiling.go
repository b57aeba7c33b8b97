// Package profiling writes a CPU profile of the whole process when the
// environment asks for one (FERRY_CPUPROFILE=path), for benchmarks and
// operators chasing a slow transfer. It costs nothing when unset.
package profiling

import (
	"fmt"
	"os"
	"runtime/pprof"
)

// Start begins a CPU profile into $FERRY_CPUPROFILE (".<pid>" appended) and
// returns the function that ends it; without the variable it does nothing.
func Start() (stop func(), err error) {
	path := os.Getenv("FERRY_CPUPROFILE")
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(fmt.Sprintf("%s.%d", path, os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("FERRY_CPUPROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("FERRY_CPUPROFILE: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
