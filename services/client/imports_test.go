package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The client library is imported by the CLI, the dashboard and users'
// programs: it depends on the standard library and gophercloud only, never
// on Ferry's server packages or their heavy dependencies.
func TestImportsOnlyGophercloud(t *testing.T) {
	const self = "github.com/ferry-project/ferry/services/client"
	out, err := exec.Command("go", "list", "-deps", self+"/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbidden := []string{"github.com/gin-gonic/", "gorm.io/", "github.com/ceph/go-ceph", "github.com/rabbitmq/amqp091-go", "github.com/streadway/amqp"}
	n := 0
	for dep := range strings.FieldsSeq(string(out)) {
		n++
		if strings.HasPrefix(dep, "github.com/ferry-project/ferry/") && dep != self && !strings.HasPrefix(dep, self+"/") {
			t.Errorf("the client library depends on the server package %s", dep)
		}
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("the client library depends on %s", dep)
			}
		}
	}
	if n < 5 || !strings.Contains(string(out), "github.com/gophercloud/gophercloud/v2\n") {
		t.Errorf("go list -deps listed %d packages:\n%s", n, out)
	}
}
