// Command ferry-api is Ferry's REST API service (package services/api).
package main

import (
	"os"

	"github.com/ferry-project/ferry/services/api"
)

func main() {
	os.Exit(api.Main(os.Args[1:], os.Stderr))
}
