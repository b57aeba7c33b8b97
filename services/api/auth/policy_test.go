package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v2"
)

func TestParseValid(t *testing.T) {
	admin := &Context{ProjectID: "p1", UserID: "u1", Roles: []string{"admin"}}
	member := &Context{ProjectID: "p1", UserID: "u1", Roles: []string{"member"}}
	target := map[string]string{"project_id": "p1", "user_id": "u1"}
	for _, tc := range []struct {
		check         string
		admin, member bool
	}{
		{"", true, true},
		{"@", true, true},
		{"!", false, false},
		{"role:admin", true, false},
		{"role:member", true, true},
		{"role:reader", true, true},
		{"not role:admin", false, true},
		{"NOT role:admin", false, true},
		{"not not role:admin", true, false},
		{"role:admin or role:member", true, true},
		{"role:admin and role:member", true, false},
		{"project_id:%(project_id)s", true, true},
		{"project_id:%(owner)s", false, false}, // missing target attribute
		{"project_id:p1", true, true},
		{"project_id:'p2'", false, false},
		{"user_id:%(user_id)s and (role:admin or role:member)", true, true},
		{"(role:admin)", true, false},
		{"((role:admin or !) and @)", true, false},
		{"role:member and not role:admin", false, true},
		// and binds tighter than or.
		{"role:admin or role:member and !", true, false},
		{"(role:admin or role:member) and !", false, false},
		{"project_id:%(project_id)s and(role:admin)", true, false},
	} {
		t.Run(tc.check, func(t *testing.T) {
			n, err := parse("r", tc.check)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				creds *Context
				want  bool
			}{{admin, tc.admin}, {member, tc.member}} {
				p := &Policy{rules: map[string]node{"r": n}}
				if got := p.Enforce("r", c.creds, target); got != c.want {
					t.Errorf("roles %v: got %v, want %v", c.creds.Roles, got, c.want)
				}
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	for _, tc := range []struct {
		check string
		pos   int
		msg   string
	}{
		{"role:admin and", 15, "unexpected end"},
		{"role:admin or or role:member", 15, `unexpected "or"`},
		{"(role:admin", 12, "missing )"},
		{"role:admin)", 11, `unexpected ")"`},
		{"role:admin role:member", 12, `unexpected "role:member"`},
		{"admin", 1, "is not a check"},
		{"role:", 1, "is not a check"},
		{"colour:blue", 1, `unknown check kind "colour"`},
		{"project_id:%(project_id)", 12, "bad substitution"},
		{"project_id:%(project_id", 12, "bad substitution"},
		{"()", 2, "unexpected )"},
		{"not", 4, "unexpected end"},
		{"and role:admin", 1, `unexpected "and"`},
	} {
		t.Run(tc.check, func(t *testing.T) {
			_, err := parse("transfer:x", tc.check)
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want a SyntaxError", err)
			}
			if se.Pos != tc.pos || !strings.Contains(se.Msg, tc.msg) || se.Rule != "transfer:x" {
				t.Errorf("got %q (pos %d), want position %d and %q", err, se.Pos, tc.pos, tc.msg)
			}
			if !strings.Contains(err.Error(), `"transfer:x"`) {
				t.Errorf("error %q does not name the rule", err)
			}
		})
	}
}

// The defaults for admin, member and reader in their own project and in
// another.
func TestDefaultPolicyTruthTable(t *testing.T) {
	p := DefaultPolicy()
	own := map[string]string{"project_id": "p1"}
	other := map[string]string{"project_id": "p2"}
	creds := map[string]*Context{
		"admin":  {ProjectID: "p1", Roles: []string{"admin"}},
		"member": {ProjectID: "p1", Roles: []string{"member", "reader"}},
		"reader": {ProjectID: "p1", Roles: []string{"reader"}},
		// Roles without the implied ones still work.
		"member-only": {ProjectID: "p1", Roles: []string{"member"}},
		"none":        {ProjectID: "p1", Roles: []string{"other"}},
	}
	type row struct{ admin, member, reader, memberOnly, none bool }
	for _, tc := range []struct {
		rule   string
		target map[string]string
		want   row
	}{
		{"transfer:create", own, row{true, true, false, true, false}},
		{"transfer:create", other, row{true, false, false, false, false}},
		{"transfer:create:image_source", own, row{true, false, false, false, false}},
		{"transfer:get", own, row{true, true, true, true, false}},
		{"transfer:get", other, row{true, false, false, false, false}},
		{"transfer:get_all", own, row{true, true, true, true, false}},
		{"transfer:events", own, row{true, true, true, true, false}},
		{"transfer:events", other, row{true, false, false, false, false}},
		{"transfer:get_all_projects", own, row{true, false, false, false, false}},
		{"transfer:cancel", own, row{true, true, false, true, false}},
		{"transfer:cancel", other, row{true, false, false, false, false}},
		{"transfer:retry", own, row{true, true, false, true, false}},
		{"transfer:delete", own, row{true, true, false, true, false}},
		{"transfer:delete", other, row{true, false, false, false, false}},
		{"replication:create", own, row{true, true, false, true, false}},
		{"replication:create", other, row{true, false, false, false, false}},
		{"replication:create:image_source", own, row{true, false, false, false, false}},
		{"replication:get", own, row{true, true, true, true, false}},
		{"replication:get", other, row{true, false, false, false, false}},
		{"replication:get_all", own, row{true, true, true, true, false}},
		{"replication:get_all_projects", own, row{true, false, false, false, false}},
		{"replication:update", own, row{true, true, false, true, false}},
		{"replication:update", other, row{true, false, false, false, false}},
		{"replication:delete", own, row{true, true, false, true, false}},
		{"replication:action", own, row{true, true, false, true, false}},
		{"replication:drill", own, row{true, true, false, true, false}},
		{"replication:drill", other, row{true, false, false, false, false}},
		{"service:get_all", own, row{true, false, false, false, false}},
		{"no:such:rule", own, row{}},
		{"transfer:get", nil, row{true, false, false, false, false}},
	} {
		want := map[string]bool{"admin": tc.want.admin, "member": tc.want.member, "reader": tc.want.reader,
			"member-only": tc.want.memberOnly, "none": tc.want.none}
		for who, c := range creds {
			if got := p.Enforce(tc.rule, c, tc.target); got != want[who] {
				t.Errorf("%s on %v as %s: got %v, want %v", tc.rule, tc.target, who, got, want[who])
			}
		}
	}
	if p.Enforce("transfer:get", nil, own) {
		t.Error("nil credentials allowed")
	}
}

func TestPolicyReferencesAndCycles(t *testing.T) {
	for _, tc := range []struct {
		name      string
		overrides map[string]string
		err       string
	}{
		{"custom rule", map[string]string{"ops": "role:ops", "transfer:create": "rule:ops or rule:admin_required"}, ""},
		{"unknown reference", map[string]string{"transfer:create": "rule:nope"}, `refers to unknown rule "nope"`},
		{"self cycle", map[string]string{"a": "rule:a"}, "reference cycle a -> a"},
		{"long cycle", map[string]string{"a": "rule:b", "b": "role:x or rule:c", "c": "not rule:a"}, "reference cycle a -> b -> c -> a"},
		{"cycle through defaults", map[string]string{"admin_required": "rule:admin_or_member"}, "reference cycle"},
		{"syntax", map[string]string{"transfer:get": "role:reader and"}, `policy rule "transfer:get": position 16`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewPolicy(tc.overrides)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("err = %v, want %q", err, tc.err)
			}
		})
	}
	p, err := NewPolicy(map[string]string{"ops": "role:ops", "transfer:create": "rule:ops or rule:admin_required"})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Enforce("transfer:create", &Context{Roles: []string{"ops"}}, nil) {
		t.Error("ops denied transfer:create")
	}
	if p.Enforce("transfer:create", &Context{ProjectID: "p1", Roles: []string{"member"}}, map[string]string{"project_id": "p1"}) {
		t.Error("member allowed transfer:create after the override")
	}
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	reader := &Context{ProjectID: "p1", Roles: []string{"reader"}}
	own := map[string]string{"project_id": "p1"}

	p, err := LoadPolicy(filepath.Join(dir, "missing.yaml"))
	if err != nil {
		t.Fatalf("missing file: %v", err)
	}
	if got, _ := p.Rule("transfer:create"); got != "rule:admin_or_member" {
		t.Errorf("default transfer:create = %q", got)
	}

	p, err = LoadPolicy(write("empty.yaml", "# nothing\n"))
	if err != nil || !p.Enforce("transfer:get", reader, own) {
		t.Fatalf("empty file: %v", err)
	}

	p, err = LoadPolicy(write("policy.yaml", `
"transfer:create": "rule:admin_or_reader"
"transfer:get": "!"
`))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Enforce("transfer:create", reader, own) || p.Enforce("transfer:get", reader, own) {
		t.Error("overrides not applied")
	}
	if !p.Enforce("transfer:cancel", &Context{ProjectID: "p1", Roles: []string{"member"}}, own) {
		t.Error("a rule not overridden lost its default")
	}

	for _, tc := range []struct{ content, err string }{
		{`"transfer:get": "role:reader or"`, `"transfer:get": position 15`},
		{`"transfer:get": [a, b]`, "policy file"},
		{"\"a\": \"@\"\n\"a\": \"!\"\n", "policy file"},
		{`: : :`, "policy file"},
	} {
		_, err := LoadPolicy(write("bad.yaml", tc.content))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: err = %v, want %q", tc.content, err, tc.err)
		}
	}
}

// The sample, uncommented, is the default policy.
func TestSampleYAML(t *testing.T) {
	s := SampleYAML()
	var uncommented strings.Builder
	for line := range strings.SplitSeq(s, "\n") {
		if strings.HasPrefix(line, `#"`) {
			uncommented.WriteString(line[1:] + "\n")
		}
	}
	var m map[string]string
	if err := yaml.UnmarshalStrict([]byte(uncommented.String()), &m); err != nil {
		t.Fatal(err)
	}
	defaults := DefaultRules()
	if len(m) != len(defaults) {
		t.Fatalf("sample has %d rules, want %d", len(m), len(defaults))
	}
	for _, r := range defaults {
		if m[r.Name] != r.Check {
			t.Errorf("%s: sample %q, default %q", r.Name, m[r.Name], r.Check)
		}
	}
	var all map[string]string
	if err := yaml.Unmarshal([]byte(s), &all); err != nil || len(all) != 0 {
		t.Errorf("the sample as is must override nothing: %v %v", all, err)
	}
}
