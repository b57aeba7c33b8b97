package stream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ferry-project/ferry/services/internal/pki"
)

// Server defaults.
const (
	DefaultTicketTTL          = 5 * time.Minute
	DefaultHandshakeTimeout   = 10 * time.Second
	DefaultIdleTimeout        = 60 * time.Second
	DefaultCheckpointInterval = 5 * time.Second
	DefaultCheckpointBytes    = 1 << 30
	DefaultMaxStreams         = MaxStreams + 8 // the sender's maximum, its control connection and stragglers
	DefaultMaxPending         = 4096
	DefaultMaxSessions        = 32
	DefaultMaxConnections     = 128
)

// ServerConfig configures the destination side. Zero values take defaults.
type ServerConfig struct {
	// TLSConfig is required; build it with ServerTLSConfig.
	TLSConfig *tls.Config
	Logger    *slog.Logger
	// Tickets lets the caller share or inspect the store; nil creates one.
	Tickets *TicketStore
	// TicketTTL: a session with no connection and no activity for this long
	// ends with ErrTicketExpired.
	TicketTTL time.Duration
	// HandshakeTimeout bounds the TLS handshake plus the Hello frame.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that moves no byte for this long.
	IdleTimeout time.Duration
	// A checkpoint is saved when the watermark moved and either
	// CheckpointInterval passed or CheckpointBytes were folded since the
	// last one. The image is flushed first.
	CheckpointInterval time.Duration
	CheckpointBytes    uint64
	// MaxStreams bounds the connections of one session.
	MaxStreams int
	// MaxPending bounds the written-but-not-contiguous chunks a session
	// holds digests for; a chunk further ahead is refused.
	MaxPending int
	// MaxSessions bounds the sessions open at once (a prepare beyond is
	// ErrTooManySessions); MaxConnections the connections being served
	// (one beyond is closed at once, before its handshake). A
	// connection's memory is bounded by itself: control frames only until
	// its Hello is authorized, then chunks of the session's size.
	MaxSessions    int
	MaxConnections int
	// Window is the credit a session grants v2 sources (default
	// DefaultWindow): bytes of chunk frames unacknowledged at once, which
	// bounds what the destination buffers for its writers.
	Window uint64
	// Writers is the chunks a session verifies and writes at once (v2).
	Writers int
	// MaxVersion is the highest protocol version served (default
	// ProtocolVersion); 1 serves v1 only.
	MaxVersion int
}

func (c *ServerConfig) applyDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Tickets == nil {
		c.Tickets = NewTicketStore(nil)
	}
	if c.TicketTTL <= 0 {
		c.TicketTTL = DefaultTicketTTL
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = DefaultCheckpointInterval
	}
	if c.CheckpointBytes == 0 {
		c.CheckpointBytes = DefaultCheckpointBytes
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	if c.MaxPending <= 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.MaxSessions <= 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.Writers <= 0 {
		c.Writers = DefaultWriters
	}
	c.Writers = min(c.Writers, MaxWriters)
	if c.MaxVersion <= 0 || c.MaxVersion > ProtocolVersion {
		c.MaxVersion = ProtocolVersion
	}
}

// Server is the destination agent's data port: it prepares sessions, accepts
// verified TLS connections that present a session's ticket, and writes the
// chunks they carry.
type Server struct {
	cfg       ServerConfig
	log       *slog.Logger
	tickets   *TicketStore
	prepareMu sync.Mutex // serializes PrepareSession

	mu       sync.Mutex
	sessions map[string]*Session
	closed   bool
	// ended remembers why recent sessions ended (bounded), so that a
	// stream reconnecting to a failed session learns the reason.
	ended      map[string]string
	endedOrder []string
}

const maxEndedReasons = 256

// NewServer checks cfg and returns a server with no session.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.TLSConfig == nil {
		return nil, errors.New("stream: server needs a TLS config")
	}
	if cfg.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, errors.New("stream: server TLS config must require and verify client certificates")
	}
	if cfg.TLSConfig.MinVersion < tls.VersionTLS13 {
		return nil, errors.New("stream: server TLS config must require TLS 1.3")
	}
	cfg.applyDefaults()
	cfg.TLSConfig = cfg.TLSConfig.Clone()
	cfg.TLSConfig.NextProtos = offeredALPN(cfg.MaxVersion)
	return &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		tickets:  cfg.Tickets,
		sessions: make(map[string]*Session),
		ended:    make(map[string]string),
	}, nil
}

// PrepareRequest opens a session for one transfer on the destination.
type PrepareRequest struct {
	TransferID string
	// PeerRegion, when set, is the region whose agent certificate (pki
	// identity: that region, role agent) every connection of the session
	// must present: the transfer's source region.
	PeerRegion string
	// ImageName ("pool/image") is bound into the ticket and logged.
	ImageName   string
	Image       DestImage
	Checkpoints CheckpointStore
	// ChunkSize must match the source's; 0 means DefaultChunkSize.
	ChunkSize uint64
}

// PrepareResponse is what the source needs to send: the ticket and where to
// resume.
type PrepareResponse struct {
	Ticket    string `json:"ticket"`
	ChunkSize uint64 `json:"chunk_size"`
	// Checkpoint is the resume point (Watermark 0: from the start). The
	// source passes it as SendRequest.ResumeFrom.
	Checkpoint Checkpoint `json:"checkpoint"`
	Resumed    bool       `json:"resumed"`
	// Session is the destination-side handle (Wait, Abort).
	Session *Session `json:"-"`
}

// PrepareSession opens (or replaces) the session of req.TransferID: it loads
// the image's checkpoint, issues a fresh ticket and returns both. A session
// already open for the transfer is ended first (its ticket dies, its
// connections close, its checkpoint is saved).
func (s *Server) PrepareSession(ctx context.Context, req PrepareRequest) (PrepareResponse, error) {
	if req.ChunkSize == 0 {
		req.ChunkSize = DefaultChunkSize
	}
	switch {
	case req.TransferID == "" || len(req.TransferID) > MaxIDLen:
		return PrepareResponse{}, fmt.Errorf("stream: prepare: transfer id must have 1..%d bytes", MaxIDLen)
	case req.Image == nil || req.Checkpoints == nil:
		return PrepareResponse{}, errors.New("stream: prepare: image and checkpoint store are required")
	}
	if err := checkChunkSize(req.ChunkSize); err != nil {
		return PrepareResponse{}, fmt.Errorf("stream: prepare: %w", err)
	}
	// librbd's cache starts writethrough and switches to writeback at the
	// first flush: flush once before any chunk is written.
	if err := req.Image.Flush(); err != nil {
		return PrepareResponse{}, fmt.Errorf("stream: prepare: first flush: %w", err)
	}
	log := s.log.With("transfer_id", req.TransferID, "image", req.ImageName)

	s.prepareMu.Lock()
	defer s.prepareMu.Unlock()
	s.mu.Lock()
	closed, old, open := s.closed, s.sessions[req.TransferID], len(s.sessions)
	s.mu.Unlock()
	if closed {
		return PrepareResponse{}, ErrServerClosed
	}
	if old == nil && open >= s.cfg.MaxSessions {
		return PrepareResponse{}, fmt.Errorf("%w: %d open", ErrTooManySessions, open)
	}
	if old != nil {
		old.end(ErrSuperseded, true)
		select {
		case <-old.done:
		case <-ctx.Done():
			return PrepareResponse{}, fmt.Errorf("stream: prepare: waiting for the previous session: %w", ctx.Err())
		}
	}

	resume := Checkpoint{TransferID: req.TransferID, ChunkSize: req.ChunkSize}
	cp, ok, err := req.Checkpoints.LoadCheckpoint(ctx)
	if err != nil {
		return PrepareResponse{}, fmt.Errorf("stream: prepare: load checkpoint: %w", err)
	}
	if ok {
		if err := cp.usableFor(req.TransferID, req.ChunkSize); err != nil {
			log.Info("checkpoint ignored, starting from the beginning", "reason", err.Error())
		} else {
			resume = cp
		}
	}
	folder, err := newDigestFolder(resume.Watermark, resume.BytesDone, resume.DigestState, s.cfg.MaxPending)
	if err != nil {
		return PrepareResponse{}, fmt.Errorf("stream: prepare: %w", err)
	}
	ticket, err := s.tickets.Issue(req.TransferID, req.ImageName, s.cfg.TicketTTL)
	if err != nil {
		return PrepareResponse{}, fmt.Errorf("stream: prepare: %w", err)
	}
	sess := newSession(s, req, ticket, folder, resume, log)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.tickets.closeIssued(req.TransferID, ticket)
		return PrepareResponse{}, ErrServerClosed
	}
	s.sessions[req.TransferID] = sess
	s.mu.Unlock()
	sess.start()
	log.Info("session prepared", "watermark", resume.Watermark, "bytes_done", resume.BytesDone, "chunk_size", req.ChunkSize)
	return PrepareResponse{
		Ticket:     ticket,
		ChunkSize:  req.ChunkSize,
		Checkpoint: resume,
		Resumed:    resume.Watermark > 0,
		Session:    sess,
	}, nil
}

// Session returns the open session of transferID.
func (s *Server) Session(transferID string) (*Session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[transferID]
	return sess, ok
}

// Commit ends transferID's session like a Done frame would: it checks that
// every chunk up to d.TotalChunks is written and that the transfer digest
// matches, flushes the image and saves a complete checkpoint. A mismatch
// ends the session in error.
func (s *Server) Commit(ctx context.Context, transferID string, d Done) (CommitResult, error) {
	sess, ok := s.Session(transferID)
	if !ok {
		return CommitResult{}, ErrNoSession
	}
	res, err := sess.commit(ctx, d)
	if err != nil {
		sess.fail(0, err)
		return CommitResult{}, err
	}
	return res, nil
}

// Abort ends transferID's session with reason (its checkpoint is saved).
func (s *Server) Abort(transferID string, reason error) {
	if sess, ok := s.Session(transferID); ok {
		sess.end(reason, true)
	}
}

// Close ends every session with ErrServerClosed, saving their checkpoints,
// and refuses new ones. Serve is stopped by its context.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	var all []*Session
	for _, sess := range s.sessions {
		all = append(all, sess)
	}
	s.mu.Unlock()
	for _, sess := range all {
		sess.end(ErrServerClosed, true)
	}
	for _, sess := range all {
		select {
		case <-sess.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (s *Server) removeSession(sess *Session, reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[sess.id] != sess {
		return
	}
	delete(s.sessions, sess.id)
	why := "committed"
	if reason != nil {
		why = reason.Error()
	}
	if _, ok := s.ended[sess.id]; !ok {
		s.endedOrder = append(s.endedOrder, sess.id)
	}
	s.ended[sess.id] = why
	if len(s.endedOrder) > maxEndedReasons {
		delete(s.ended, s.endedOrder[0])
		s.endedOrder = s.endedOrder[1:]
	}
}

// endedReason is why transferID's last session ended, if remembered.
func (s *Server) endedReason(transferID string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.ended[transferID]
	return r, ok
}

// Serve accepts TLS connections on ln until ctx is done, then closes ln,
// waits for its connections to end and returns nil. Sessions outlive Serve.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	tln := tls.NewListener(bufListener{ln}, s.cfg.TLSConfig)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, s.cfg.MaxConnections)
	for {
		c, err := tln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("stream: serve: %w", err)
			}
			s.log.Warn("accept failed", "reason", err.Error())
			if sleepCtx(ctx, 50*time.Millisecond) != nil {
				return nil
			}
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			s.log.Warn("connection refused", "remote", c.RemoteAddr().String(), "reason", fmt.Sprintf("%d connections already served", s.cfg.MaxConnections))
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			s.handleConn(ctx, c)
		}()
	}
}

// handleConn runs one connection: TLS handshake and Hello under
// HandshakeTimeout, ticket check, then the session's chunk loop.
func (s *Server) handleConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	log := s.log.With("remote", c.RemoteAddr().String())
	tc, ok := c.(*tls.Conn)
	if !ok {
		log.Warn("connection refused", "reason", "not a TLS connection")
		return
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	hsTimer := time.AfterFunc(s.cfg.HandshakeTimeout, func() { c.Close() })
	timedOut := func() bool { return !hsTimer.Stop() }
	if err := tc.HandshakeContext(ctx); err != nil {
		reason := "tls handshake: " + err.Error()
		if timedOut() {
			reason = "tls handshake timed out"
		}
		log.Warn("connection refused", "reason", reason)
		return
	}
	negotiated := alpnVersion(tc.ConnectionState().NegotiatedProtocol)
	ic := &idleConn{Conn: tc, timeout: s.cfg.IdleTimeout}
	bw := bufio.NewWriterSize(ic, 4<<10)
	fr := newFrameReader(ic, 0)
	f, err := fr.next()
	if timedOut() {
		log.Warn("connection refused", "reason", "no hello within the handshake timeout")
		return
	}
	if err != nil {
		s.refuse(log, bw, fmt.Errorf("reading hello: %w", err))
		return
	}
	hello, ok := f.(*Hello)
	if !ok {
		s.refuse(log, bw, protoErrorf("expected hello, got %s", f.Type()))
		return
	}
	// The connection speaks the Hello's version: the one ALPN negotiated
	// (the highest both sides speak) or an older one, never a newer one.
	version := fr.got
	if version > negotiated {
		s.refuse(log, bw, protoErrorf("hello in v%d on a connection that negotiated v%d", version, negotiated))
		return
	}
	fr.version = version
	log = log.With("transfer_id", hello.TransferID, "stream", hello.Stream, "peer", peerName(tc))
	sess, err := s.authorize(hello, tc)
	if err != nil {
		s.refuseV(log, bw, version, err)
		return
	}
	linger := sess.serveConn(ctx, version, hello.Stream, ic, fr, bw, log)
	sess.detach()
	if linger {
		lingerClose(tc)
	}
}

// refuse logs why a connection is refused and tells the peer (in v1,
// which every version reads, before a Hello is understood).
func (s *Server) refuse(log *slog.Logger, bw *bufio.Writer, err error) {
	s.refuseV(log, bw, 1, err)
}

func (s *Server) refuseV(log *slog.Logger, bw *bufio.Writer, version uint8, err error) {
	log.Warn("connection refused", "reason", err.Error())
	sendErrorV(bw, version, err)
}

func sendError(bw *bufio.Writer, err error) { sendErrorV(bw, 1, err) }

func sendErrorV(bw *bufio.Writer, version uint8, err error) {
	if WriteFrameV(bw, version, &ErrorFrame{Reason: err.Error()}) == nil {
		_ = bw.Flush()
	}
}

// authorize checks the Hello's ticket and attaches the connection to its
// session.
func (s *Server) authorize(h *Hello, tc *tls.Conn) (*Session, error) {
	image, err := s.tickets.Validate(h.Ticket, h.TransferID)
	if errors.Is(err, ErrNoSession) {
		if why, ok := s.endedReason(h.TransferID); ok {
			return nil, fmt.Errorf("%w: the session ended: %s", ErrNoSession, why)
		}
	}
	if err != nil {
		return nil, err
	}
	sess, ok := s.Session(h.TransferID)
	if !ok || sess.ticket == "" {
		return nil, ErrNoSession
	}
	if image != sess.imageName {
		return nil, ErrTicketInvalid
	}
	if sess.peerRegion != "" {
		peers := tc.ConnectionState().PeerCertificates
		if len(peers) == 0 {
			return nil, fmt.Errorf("%w: no client certificate", pki.ErrIdentity)
		}
		if err := pki.CheckIdentity(peers[0], sess.peerRegion, pki.RoleAgent); err != nil {
			return nil, err
		}
	}
	if err := sess.attach(); err != nil {
		return nil, err
	}
	return sess, nil
}

// isStreamDrop tells a transport failure (the source may reconnect) from a
// protocol violation (the session fails).
func isStreamDrop(err error) bool {
	return !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrFrameTooLarge)
}
