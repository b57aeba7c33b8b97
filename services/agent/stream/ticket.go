package stream

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"sync"
	"time"
)

// TicketLen is the number of random bytes in a ticket.
const TicketLen = 32

// TicketStore issues and checks the destination's per-session tickets. A
// ticket is bound to one transfer id and one destination image; it expires
// when unused for its TTL (every accepted connection and every written
// chunk renews it) and dies when its session is closed. Lookups are by
// transfer id and the comparison is constant-time, so a ticket presented
// for another transfer never matches.
type TicketStore struct {
	mu      sync.Mutex
	now     func() time.Time
	tickets map[string]*ticketEntry // by transfer id
}

type ticketEntry struct {
	secret  [TicketLen]byte
	image   string
	ttl     time.Duration
	expires time.Time
}

// NewTicketStore returns an empty store; now is the clock (nil: time.Now).
func NewTicketStore(now func() time.Time) *TicketStore {
	if now == nil {
		now = time.Now
	}
	return &TicketStore{now: now, tickets: make(map[string]*ticketEntry)}
}

// Issue creates the ticket of transferID's session for image, replacing any
// earlier ticket of that transfer. It returns the base64url string.
func (s *TicketStore) Issue(transferID, image string, ttl time.Duration) (string, error) {
	if transferID == "" || len(transferID) > MaxIDLen {
		return "", fmt.Errorf("stream: transfer id must have 1..%d bytes", MaxIDLen)
	}
	if ttl <= 0 {
		return "", fmt.Errorf("stream: ticket ttl must be positive, got %v", ttl)
	}
	e := &ticketEntry{image: image, ttl: ttl}
	if _, err := rand.Read(e.secret[:]); err != nil {
		return "", fmt.Errorf("stream: ticket randomness: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e.expires = s.now().Add(ttl)
	s.tickets[transferID] = e
	return base64.RawURLEncoding.EncodeToString(e.secret[:]), nil
}

// Validate checks ticket for transferID and renews it. It returns the image
// the ticket is bound to. Errors: ErrNoSession (no ticket: never issued or
// closed), ErrTicketExpired, ErrTicketInvalid (malformed or not this
// transfer's ticket).
func (s *TicketStore) Validate(ticket, transferID string) (image string, err error) {
	var got [TicketLen]byte
	raw, decErr := base64.RawURLEncoding.DecodeString(ticket)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.tickets[transferID]
	if !ok {
		return "", ErrNoSession
	}
	copy(got[:], raw)
	match := subtle.ConstantTimeCompare(got[:], e.secret[:]) == 1
	if decErr != nil || len(raw) != TicketLen || !match {
		return "", ErrTicketInvalid
	}
	now := s.now()
	if now.After(e.expires) {
		return "", ErrTicketExpired
	}
	e.expires = now.Add(e.ttl)
	return e.image, nil
}

// Touch renews transferID's ticket if it has not expired yet.
func (s *TicketStore) Touch(transferID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.tickets[transferID]; ok {
		if now := s.now(); !now.After(e.expires) {
			e.expires = now.Add(e.ttl)
		}
	}
}

// Expired reports whether transferID's ticket is past its expiry or gone.
func (s *TicketStore) Expired(transferID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.tickets[transferID]
	return !ok || s.now().After(e.expires)
}

// Close makes transferID's ticket useless.
func (s *TicketStore) Close(transferID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tickets, transferID)
}

// closeIssued closes transferID's ticket only if it is still ticket, so a
// session that ends late cannot kill the ticket of the session replacing it.
func (s *TicketStore) closeIssued(transferID, ticket string) {
	raw, err := base64.RawURLEncoding.DecodeString(ticket)
	if err != nil || len(raw) != TicketLen {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.tickets[transferID]; ok && subtle.ConstantTimeCompare(raw, e.secret[:]) == 1 {
		delete(s.tickets, transferID)
	}
}
