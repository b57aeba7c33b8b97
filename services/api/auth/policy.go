package auth

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v2"
)

// Rule is a named policy rule with its default check string.
type Rule struct {
	Name        string
	Check       string
	Description string
}

// DefaultRules returns Ferry's default policy, in the order of the sample
// file:
//
//	admin_required:               role:admin
//	project_member:               role:member and project_id:%(project_id)s
//	project_reader:               role:reader and project_id:%(project_id)s
//	admin_or_member:              rule:admin_required or rule:project_member
//	admin_or_reader:              rule:admin_required or rule:project_reader
//	transfer:create:              rule:admin_or_member
//	transfer:create:image_source: rule:admin_required
//	transfer:get:                 rule:admin_or_reader
//	transfer:get_all:             rule:admin_or_reader
//	transfer:events:              rule:admin_or_reader
//	transfer:get_all_projects:    rule:admin_required
//	transfer:cancel:              rule:admin_or_member
//	transfer:retry:               rule:admin_or_member
//	transfer:delete:              rule:admin_or_member
//	replication:create:           rule:admin_or_member
//	replication:create:image_source: rule:admin_required
//	replication:get:              rule:admin_or_reader
//	replication:get_all:          rule:admin_or_reader
//	replication:get_all_projects: rule:admin_required
//	replication:update:           rule:admin_or_member
//	replication:delete:           rule:admin_or_member
//	replication:action:           rule:admin_or_member
//	replication:drill:            rule:admin_or_member
//	service:get_all:              rule:admin_required
//	metrics:get:                  rule:admin_required
//
// Roles imply one another as Keystone's defaults do (admin ⇒ member ⇒
// reader), even when a token does not list the implied roles.
func DefaultRules() []Rule {
	return []Rule{
		{"admin_required", "role:admin", "Administrators of the deployment."},
		{"project_member", "role:member and project_id:%(project_id)s", "Members of the project that owns the target."},
		{"project_reader", "role:reader and project_id:%(project_id)s", "Readers of the project that owns the target."},
		{"admin_or_member", "rule:admin_required or rule:project_member", "Administrators, or members of the owning project."},
		{"admin_or_reader", "rule:admin_required or rule:project_reader", "Administrators, or readers of the owning project."},
		{"transfer:create", "rule:admin_or_member", "POST /v1/transfers: create a transfer."},
		{"transfer:create:image_source", "rule:admin_required", "POST /v1/transfers with a raw pool and image as the source (instead of a Cinder volume or backup)."},
		{"transfer:get", "rule:admin_or_reader", "GET /v1/transfers/{id}: show a transfer."},
		{"transfer:get_all", "rule:admin_or_reader", "GET /v1/transfers: list the project's transfers."},
		{"transfer:events", "rule:admin_or_reader", "GET /v1/transfers/{id}/events: a transfer's history."},
		{"transfer:get_all_projects", "rule:admin_required", "GET /v1/transfers?all_projects=true: list the transfers of every project."},
		{"transfer:cancel", "rule:admin_or_member", "POST /v1/transfers/{id}/action {\"cancel\": null}."},
		{"transfer:retry", "rule:admin_or_member", "POST /v1/transfers/{id}/action {\"retry\": null}."},
		{"transfer:delete", "rule:admin_or_member", "DELETE /v1/transfers/{id}: delete a transfer in a terminal state."},
		{"replication:create", "rule:admin_or_member", "POST /v1/replications: protect a volume continuously in another region."},
		{"replication:create:image_source", "rule:admin_required", "POST /v1/replications with a raw pool and image as the source (instead of a Cinder volume)."},
		{"replication:get", "rule:admin_or_reader", "GET /v1/replications/{id}: show a replication, its points, events and drills."},
		{"replication:get_all", "rule:admin_or_reader", "GET /v1/replications: list the project's replications."},
		{"replication:get_all_projects", "rule:admin_required", "GET /v1/replications?all_projects=true: list the replications of every project."},
		{"replication:update", "rule:admin_or_member", "PUT /v1/replications/{id}: change a replication's interval, RPO, retention, bandwidth limit, name or description."},
		{"replication:delete", "rule:admin_or_member", "DELETE /v1/replications/{id}: stop a replication and remove Ferry's snapshots and (unless keep_replica) the replica."},
		{"replication:action", "rule:admin_or_member", "POST /v1/replications/{id}/action {\"sync\": null}, {\"pause\": null} or {\"resume\": null}."},
		{"replication:drill", "rule:admin_or_member", "POST /v1/replications/{id}/action {\"drill\": {...}}: clone a point into a new Cinder volume of the project in the destination region."},
		{"replication:failover", "rule:admin_or_member", "POST /v1/replications/{id}/action {\"failover\": {...}} or {\"failback\": null}: make the replica the project's volume in the destination region (planned, or forced to a point without the source region), and come back. Operators who keep this to admins set \"rule:admin_required\"."},
		{"service:get_all", "rule:admin_required", "GET /v1/services: list Ferry's services and agents."},
		{"metrics:get", "rule:admin_required", "GET /metrics on the API port: Prometheus metrics (unless [api] metrics_listen serves them on an address of their own)."},
	}
}

// SampleYAML returns the default policy as a commented policy.yaml.
func SampleYAML() string {
	var b strings.Builder
	b.WriteString("# Ferry API policy (oslo.policy form).\n")
	b.WriteString("#\n")
	b.WriteString("# Every rule below is commented out and shows its default. To override one,\n")
	b.WriteString("# uncomment it and edit its check string. Check strings: role:<name>,\n")
	b.WriteString("# project_id:%(project_id)s (a credential compared to a target attribute),\n")
	b.WriteString("# user_id:..., rule:<name>, @ (always), ! (never), and, or, not, parentheses.\n")
	b.WriteString("# Roles imply one another: admin implies member, member implies reader.\n")
	for _, r := range DefaultRules() {
		fmt.Fprintf(&b, "\n# %s\n#%q: %q\n", r.Description, r.Name, r.Check)
	}
	return b.String()
}

// Policy is a parsed rule set. It is immutable and safe for concurrent use.
type Policy struct {
	rules map[string]node
	src   map[string]string
}

// NewPolicy parses the default rules overridden (or extended) by overrides.
// Syntax errors, references to unknown rules and reference cycles are errors.
func NewPolicy(overrides map[string]string) (*Policy, error) {
	p := &Policy{rules: map[string]node{}, src: map[string]string{}}
	for _, r := range DefaultRules() {
		p.src[r.Name] = r.Check
	}
	for name, check := range overrides {
		p.src[name] = check
	}
	names := make([]string, 0, len(p.src))
	for name := range p.src {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		n, err := parse(name, p.src[name])
		if err != nil {
			return nil, err
		}
		p.rules[name] = n
	}
	for _, name := range names {
		var missing error
		walkRefs(p.rules[name], func(ref string) {
			if _, ok := p.rules[ref]; !ok && missing == nil {
				missing = fmt.Errorf("policy rule %q: refers to unknown rule %q", name, ref)
			}
		})
		if missing != nil {
			return nil, missing
		}
	}
	if err := p.checkCycles(names); err != nil {
		return nil, err
	}
	return p, nil
}

// DefaultPolicy returns the default rules.
func DefaultPolicy() *Policy {
	p, err := NewPolicy(nil)
	if err != nil {
		panic("auth: default policy: " + err.Error())
	}
	return p
}

// LoadPolicy reads an oslo-style policy.yaml (`"transfer:create":
// "rule:admin_or_member"`) overriding the defaults. A missing file means the
// defaults only.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return NewPolicy(nil)
	}
	if err != nil {
		return nil, fmt.Errorf("policy file: %w", err)
	}
	var overrides map[string]string
	if err := yaml.UnmarshalStrict(data, &overrides); err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	p, err := NewPolicy(overrides)
	if err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	return p, nil
}

// Rule returns the check string of a rule and whether it exists.
func (p *Policy) Rule(name string) (string, bool) {
	s, ok := p.src[name]
	return s, ok
}

// Enforce reports whether creds may do what rule names on target (for
// example {"project_id": "<owner of the transfer>"}). An unknown rule or nil
// credentials deny.
func (p *Policy) Enforce(rule string, creds *Context, target map[string]string) bool {
	n, ok := p.rules[rule]
	if !ok || creds == nil {
		return false
	}
	return n.eval(&env{p: p, creds: creds, target: target})
}

func (p *Policy) checkCycles(names []string) error {
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var visit func(name string, path []string) error
	visit = func(name string, path []string) error {
		switch state[name] {
		case visiting:
			return fmt.Errorf("policy rule %q: reference cycle %s", name, strings.Join(append(path, name), " -> "))
		case done:
			return nil
		}
		state[name] = visiting
		var err error
		walkRefs(p.rules[name], func(ref string) {
			if err == nil {
				err = visit(ref, append(path, name))
			}
		})
		if err != nil {
			return err
		}
		state[name] = done
		return nil
	}
	for _, name := range names {
		if err := visit(name, nil); err != nil {
			return err
		}
	}
	return nil
}

// env is what a rule is evaluated against.
type env struct {
	p      *Policy
	creds  *Context
	target map[string]string
}

// node is a parsed check expression.
type node interface {
	eval(e *env) bool
}

type constNode bool

func (c constNode) eval(*env) bool { return bool(c) }

type andNode []node

func (a andNode) eval(e *env) bool {
	for _, n := range a {
		if !n.eval(e) {
			return false
		}
	}
	return true
}

type orNode []node

func (o orNode) eval(e *env) bool {
	for _, n := range o {
		if n.eval(e) {
			return true
		}
	}
	return false
}

type notNode struct{ n node }

func (n notNode) eval(e *env) bool { return !n.n.eval(e) }

type ruleNode string

func (r ruleNode) eval(e *env) bool {
	n, ok := e.p.rules[string(r)]
	return ok && n.eval(e)
}

// checkNode is kind:match, where kind is "role" or a credential attribute
// and match is a literal or a %(attr)s substitution from the target.
type checkNode struct {
	kind  string
	match string
	subst bool // match names a target attribute
}

func (c checkNode) eval(e *env) bool {
	want := c.match
	if c.subst {
		v, ok := e.target[c.match]
		if !ok || v == "" {
			return false
		}
		want = v
	}
	if c.kind == "role" {
		return e.creds.HasRole(want)
	}
	have := credAttr(e.creds, c.kind)
	return have != "" && have == want
}

// credKinds are the credential attributes a check may compare.
var credKinds = map[string]bool{
	"role": true, "user_id": true, "user_name": true, "user_domain_id": true,
	"project_id": true, "project_name": true, "project_domain_id": true,
}

func credAttr(c *Context, kind string) string {
	switch kind {
	case "user_id":
		return c.UserID
	case "user_name":
		return c.UserName
	case "user_domain_id":
		return c.UserDomainID
	case "project_id":
		return c.ProjectID
	case "project_name":
		return c.ProjectName
	case "project_domain_id":
		return c.ProjectDomainID
	}
	return ""
}

func walkRefs(n node, f func(string)) {
	switch n := n.(type) {
	case ruleNode:
		f(string(n))
	case andNode:
		for _, c := range n {
			walkRefs(c, f)
		}
	case orNode:
		for _, c := range n {
			walkRefs(c, f)
		}
	case notNode:
		walkRefs(n.n, f)
	}
}

// SyntaxError is a check string that does not parse. Pos is the 1-based
// byte position in the check string.
type SyntaxError struct {
	Rule  string
	Check string
	Pos   int
	Msg   string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("policy rule %q: position %d: %s (in %q)", e.Rule, e.Pos, e.Msg, e.Check)
}

type token struct {
	text string
	pos  int // 1-based
}

func lex(s string) []token {
	var toks []token
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '(' || c == ')':
			toks = append(toks, token{s[i : i+1], i + 1})
			i++
		default:
			start := i
			for i < len(s) {
				c := s[i]
				if c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ')' {
					break
				}
				if c == '(' {
					// Only %( opens a substitution inside a word.
					if i == start || s[i-1] != '%' {
						break
					}
					end := strings.IndexByte(s[i:], ')')
					if end < 0 {
						i = len(s)
						break
					}
					i += end + 1
					continue
				}
				i++
			}
			toks = append(toks, token{s[start:i], start + 1})
		}
	}
	return toks
}

type parser struct {
	rule, check string
	toks        []token
	i           int
}

// parse parses one check string; name is the rule's name, for errors. An
// empty check string always passes, as in oslo.policy.
func parse(name, check string) (node, error) {
	p := &parser{rule: name, check: check, toks: lex(check)}
	if len(p.toks) == 0 {
		return constNode(true), nil
	}
	n, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.i < len(p.toks) {
		t := p.toks[p.i]
		return nil, p.errAt(t.pos, "unexpected %q", t.text)
	}
	return n, nil
}

func (p *parser) errAt(pos int, format string, args ...any) error {
	return &SyntaxError{Rule: p.rule, Check: p.check, Pos: pos, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) peek() (token, bool) {
	if p.i < len(p.toks) {
		return p.toks[p.i], true
	}
	return token{}, false
}

func (p *parser) keyword(t token, kw string) bool { return strings.EqualFold(t.text, kw) }

func (p *parser) or() (node, error) {
	first, err := p.and()
	if err != nil {
		return nil, err
	}
	ns := orNode{first}
	for {
		t, ok := p.peek()
		if !ok || !p.keyword(t, "or") {
			break
		}
		p.i++
		n, err := p.and()
		if err != nil {
			return nil, err
		}
		ns = append(ns, n)
	}
	if len(ns) == 1 {
		return first, nil
	}
	return ns, nil
}

func (p *parser) and() (node, error) {
	first, err := p.not()
	if err != nil {
		return nil, err
	}
	ns := andNode{first}
	for {
		t, ok := p.peek()
		if !ok || !p.keyword(t, "and") {
			break
		}
		p.i++
		n, err := p.not()
		if err != nil {
			return nil, err
		}
		ns = append(ns, n)
	}
	if len(ns) == 1 {
		return first, nil
	}
	return ns, nil
}

func (p *parser) not() (node, error) {
	t, ok := p.peek()
	if ok && p.keyword(t, "not") {
		p.i++
		n, err := p.not()
		if err != nil {
			return nil, err
		}
		return notNode{n}, nil
	}
	return p.primary()
}

func (p *parser) primary() (node, error) {
	t, ok := p.peek()
	if !ok {
		return nil, p.errAt(len(p.check)+1, "unexpected end of rule, expected a check")
	}
	p.i++
	switch {
	case t.text == "(":
		n, err := p.or()
		if err != nil {
			return nil, err
		}
		c, ok := p.peek()
		if !ok {
			return nil, p.errAt(len(p.check)+1, "missing ) for ( at position %d", t.pos)
		}
		if c.text != ")" {
			return nil, p.errAt(c.pos, "expected ), got %q", c.text)
		}
		p.i++
		return n, nil
	case t.text == ")":
		return nil, p.errAt(t.pos, "unexpected )")
	case t.text == "@":
		return constNode(true), nil
	case t.text == "!":
		return constNode(false), nil
	case p.keyword(t, "and") || p.keyword(t, "or") || p.keyword(t, "not"):
		return nil, p.errAt(t.pos, "unexpected %q, expected a check", t.text)
	}
	kind, match, ok := strings.Cut(t.text, ":")
	if !ok || kind == "" || match == "" {
		return nil, p.errAt(t.pos, "%q is not a check (kind:match, @ or !)", t.text)
	}
	if kind == "rule" {
		return ruleNode(match), nil
	}
	if !credKinds[kind] {
		return nil, p.errAt(t.pos, "unknown check kind %q", kind)
	}
	if strings.HasPrefix(match, "%(") {
		if !strings.HasSuffix(match, ")s") || len(match) < 5 {
			return nil, p.errAt(t.pos+len(kind)+1, "bad substitution %q, want %%(attribute)s", match)
		}
		return checkNode{kind: kind, match: match[2 : len(match)-2], subst: true}, nil
	}
	if strings.ContainsAny(match, "%()") {
		return nil, p.errAt(t.pos+len(kind)+1, "bad match %q", match)
	}
	return checkNode{kind: kind, match: strings.Trim(match, `'"`)}, nil
}
