// Command ferry-manage manages Ferry's database, configuration and
// certificates.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferry-project/ferry/services/manage"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := manage.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
