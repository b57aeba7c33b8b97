package dashboard

import (
	"container/list"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"sync"
	"time"
)

// session is one logged-in browser. The Keystone token stays here, on the
// server; the browser holds only the session id.
type session struct {
	id        string
	token     string
	expiresAt time.Time // the token's expiry
	lastUsed  time.Time

	userID, userName       string
	projectID, projectName string
	domain                 string
	roles                  []string
	regions                []string // regions with a volume-ferry endpoint
	region                 string   // the selected one
	csrf                   string

	mu      sync.Mutex
	flashes []flash
}

// flash is a Horizon-style message shown once on the next page.
type flash struct {
	Level string // success, info, warning, error
	Text  string
}

func (s *session) addFlash(level, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.flashes) < 10 {
		s.flashes = append(s.flashes, flash{Level: level, Text: text})
	}
}

func (s *session) takeFlashes() []flash {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flashes
	s.flashes = nil
	return f
}

func (s *session) selectedRegion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.region
}

func (s *session) setRegion(r string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.region = r
}

func (s *session) hasRole(role string) bool {
	for _, r := range s.roles {
		if r == role {
			return true
		}
	}
	// Keystone's default implied roles: admin ⇒ member ⇒ reader.
	switch role {
	case "member":
		return s.hasRole("admin")
	case "reader":
		return s.hasRole("member")
	}
	return false
}

func (s *session) isAdmin() bool  { return s.hasRole("admin") }
func (s *session) canWrite() bool { return s.hasRole("member") }

// sessionStore is a bounded in-memory store: a session ends at its
// token's expiry or after idle without a request, whichever is first;
// beyond max sessions the least recently used is evicted.
type sessionStore struct {
	mu    sync.Mutex
	byID  map[string]*list.Element // of *session
	order *list.List               // front = most recently used
	max   int
	idle  time.Duration
	now   func() time.Time
	swept time.Time
}

func newSessionStore(max int, idle time.Duration, now func() time.Time) *sessionStore {
	return &sessionStore{byID: map[string]*list.Element{}, order: list.New(), max: max, idle: idle, now: now}
}

// randomToken is 256 random bits, URL-safe.
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return base64.RawURLEncoding.EncodeToString(b)
}

// add stores s under a fresh id and a fresh CSRF token.
func (st *sessionStore) add(s *session) {
	s.id, s.csrf = randomToken(), randomToken()
	st.mu.Lock()
	defer st.mu.Unlock()
	s.lastUsed = st.now()
	st.byID[s.id] = st.order.PushFront(s)
	for st.order.Len() > st.max {
		old := st.order.Back()
		st.order.Remove(old)
		delete(st.byID, old.Value.(*session).id)
	}
}

// get returns the live session id names and marks it used; an expired
// one is removed.
func (st *sessionStore) get(id string) *session {
	if id == "" {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	e, ok := st.byID[id]
	if !ok {
		return nil
	}
	s := e.Value.(*session)
	now := st.now()
	if !now.Before(s.expiresAt) || now.Sub(s.lastUsed) >= st.idle {
		st.order.Remove(e)
		delete(st.byID, id)
		return nil
	}
	s.lastUsed = now
	st.order.MoveToFront(e)
	return s
}

func (st *sessionStore) remove(id string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if e, ok := st.byID[id]; ok {
		st.order.Remove(e)
		delete(st.byID, id)
	}
}

func (st *sessionStore) len() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.order.Len()
}

// sweepEvery drops the expired sessions when the last sweep is older
// than d.
func (st *sessionStore) sweepEvery(d time.Duration) {
	st.mu.Lock()
	defer st.mu.Unlock()
	now := st.now()
	if now.Sub(st.swept) < d {
		return
	}
	st.swept = now
	for e := st.order.Back(); e != nil; {
		prev := e.Prev()
		s := e.Value.(*session)
		if !now.Before(s.expiresAt) || now.Sub(s.lastUsed) >= st.idle {
			st.order.Remove(e)
			delete(st.byID, s.id)
		}
		e = prev
	}
}

func equalTokens(a, b string) bool {
	return a != "" && len(a) == len(b) && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
