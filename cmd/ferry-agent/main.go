// Command ferry-agent is Ferry's per-region data mover (package services/agent).
package main

import (
	"os"

	"github.com/ferry-project/ferry/services/agent"
)

func main() {
	os.Exit(agent.Main(os.Args[1:], os.Stdout, os.Stderr))
}
