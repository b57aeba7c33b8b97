package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/ferry-project/ferry/db"
	"github.com/ferry-project/ferry/rpc"
	"github.com/ferry-project/ferry/services/api/cinder"
)

// This file is ferry-api's one place where errors become HTTP answers:
// writeError is the only writer of OpenStack error bodies (the
// authentication middleware is given it too), and dbError, cinderError and
// statusOf the only mappings of Go errors to statuses.

// HeaderRequestID is OpenStack's request id header.
const HeaderRequestID = "X-Openstack-Request-Id"

// withRequestID is the outermost handler: every response gets an id
// "req-<uuid>" in x-openstack-request-id, the router's own answers too
// (trailing-slash redirects, 404, 405), and the request's context carries
// it (rpc.RequestIDFrom) into events, outbox messages and the agents' logs.
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := "req-" + uuid.NewString()
		w.Header().Set(HeaderRequestID, id)
		next.ServeHTTP(w, r.WithContext(rpc.WithRequestID(r.Context(), id)))
	})
}

// requestID makes the request's id (withRequestID's) known to gin handlers.
func requestID() gin.HandlerFunc {
	return func(c *gin.Context) {
		id := rpc.RequestIDFrom(c.Request.Context())
		if id == "" { // a router served without withRequestID (tests)
			id = "req-" + uuid.NewString()
			c.Header(HeaderRequestID, id)
			c.Request = c.Request.WithContext(rpc.WithRequestID(c.Request.Context(), id))
		}
		c.Set("request_id", id)
		c.Next()
	}
}

// faultNames are the OpenStack error body keys per status.
var faultNames = map[int]string{
	http.StatusBadRequest:            "badRequest",
	http.StatusUnauthorized:          "unauthorized",
	http.StatusForbidden:             "forbidden",
	http.StatusNotFound:              "itemNotFound",
	http.StatusMethodNotAllowed:      "badMethod",
	http.StatusNotAcceptable:         "notAcceptable",
	http.StatusConflict:              "conflictingRequest",
	http.StatusRequestEntityTooLarge: "overLimit",
	http.StatusUnsupportedMediaType:  "badMediaType",
	http.StatusTooManyRequests:       "overLimit",
	http.StatusServiceUnavailable:    "serviceUnavailable",
	http.StatusNotImplemented:        "notImplemented",
}

// writeError writes {"itemNotFound": {"code": 404, "message": "..."}}.
func writeError(c *gin.Context, code int, message string) {
	name, ok := faultNames[code]
	if !ok {
		name = "computeFault"
	}
	c.AbortWithStatusJSON(code, gin.H{name: gin.H{"code": code, "message": message}})
}

// notFoundMessage is the 404 of a path that does not exist (at the
// request's microversion).
const notFoundMessage = "The resource could not be found."

// internalError is the 500's message: no details, they are in the log.
const internalError = "The server has either erred or is incapable of performing the requested operation."

// recovery turns a panic into a logged 500 with an OpenStack body.
func recovery(log *slog.Logger) gin.HandlerFunc {
	return gin.CustomRecoveryWithWriter(nil, func(c *gin.Context, err any) {
		log.Error("panic serving a request", "request_id", requestIDOf(c), "method", c.Request.Method, "path", c.FullPath(), "panic", fmt.Sprint(err))
		writeError(c, http.StatusInternalServerError, internalError)
	})
}

// dbError maps store errors to answers; anything unexpected is logged and
// a 500 without details.
func (s *Server) dbError(c *gin.Context, err error, what string) {
	switch {
	case errors.Is(err, db.ErrNotFound):
		writeError(c, http.StatusNotFound, what+" could not be found.")
	case errors.Is(err, db.ErrMarkerNotFound):
		writeError(c, http.StatusBadRequest, fmt.Sprintf("marker not found: %q", truncate(c.Query("marker"), 64)))
	case errors.Is(err, db.ErrInvalidSort), errors.Is(err, db.ErrInvalidArgument):
		writeError(c, http.StatusBadRequest, err.Error())
	case errors.Is(err, db.ErrInvalidTransition), errors.Is(err, db.ErrConflict):
		writeError(c, http.StatusConflict, err.Error())
	case errors.Is(err, db.ErrQuotaExceeded):
		msg := err.Error()
		if _, why, ok := strings.Cut(msg, db.ErrQuotaExceeded.Error()+": "); ok {
			msg = why
		}
		writeError(c, http.StatusRequestEntityTooLarge, "Quota exceeded: "+msg+".")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		writeError(c, http.StatusServiceUnavailable, "The request timed out.")
	default:
		s.log.Error("database", "request_id", requestIDOf(c), "error", err)
		writeError(c, http.StatusInternalServerError, internalError)
	}
}

// cinderError writes the answer to a failed resolution and returns false;
// true when err is nil.
func (s *Server) cinderError(c *gin.Context, err error, kind, id, region string) bool {
	switch {
	case err == nil:
		return true
	case errors.Is(err, cinder.ErrNotFound):
		writeError(c, http.StatusNotFound, fmt.Sprintf("%s %s could not be found in region %s.", kind, id, region))
	case errors.Is(err, cinder.ErrConflict):
		writeError(c, http.StatusConflict, capitalize(errorDetail(err))+".")
	case errors.Is(err, cinder.ErrQuota):
		writeError(c, http.StatusRequestEntityTooLarge, "Cinder quota exceeded: "+errorDetail(err)+".")
	case errors.Is(err, cinder.ErrInvalid), errors.Is(err, cinder.ErrNotConfigured):
		writeError(c, http.StatusBadRequest, capitalize(errorDetail(err))+".")
	default:
		s.log.Error("resolving a Cinder source", "request_id", requestIDOf(c), "kind", kind, "id", id, "region", region, "error", err)
		writeError(c, http.StatusServiceUnavailable, fmt.Sprintf("Cinder in region %s could not be asked about %s %s; try again later.", region, strings.ToLower(kind), id))
	}
	return false
}

// errorDetail drops the sentinel's own text from "invalid: volume x is ...".
func errorDetail(err error) string {
	msg := err.Error()
	for _, sentinel := range []error{cinder.ErrInvalid, cinder.ErrNotConfigured, cinder.ErrNotFound, cinder.ErrConflict, cinder.ErrQuota} {
		if p := sentinel.Error() + ": "; len(msg) > len(p) && msg[:len(p)] == p {
			return msg[len(p):]
		}
	}
	return msg
}

func capitalize(s string) string {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}

// badRequest is a 400 whose message names the problem.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func invalid(format string, a ...any) error { return &badRequest{msg: fmt.Sprintf(format, a...)} }

// errBodyTooLarge maps to 413.
var errBodyTooLarge = errors.New("request body too large")

// statusOf maps the request parsing errors to HTTP codes.
func statusOf(err error) int {
	var br *badRequest
	switch {
	case errors.As(err, &br):
		return http.StatusBadRequest
	case errors.Is(err, errBodyTooLarge):
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusInternalServerError
}
