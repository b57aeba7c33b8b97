//go:build functional

package manage

import (
	"strings"
	"testing"

	"github.com/ferry-project/ferry/services/internal/testenv"
)

// With the stack's broker, status passes once the schema is current.
func TestStatusAgainstStackBroker(t *testing.T) {
	conf := writeConf(t, testenv.Get(t, "TRANSPORT_URL"))
	if code, _, errs := run(t, "--config-file", conf, "db", "sync"); code != 0 {
		t.Fatalf("db sync: %s", errs)
	}
	code, out, _ := run(t, "--config-file", conf, "status")
	if code != 0 || !strings.Contains(out, "database   OK") || !strings.Contains(out, "broker     OK") {
		t.Errorf("status: %d %q", code, out)
	}
}
