// Command ferry is Ferry's command-line client.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-project/ferry/services/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
