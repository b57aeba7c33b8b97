package api

import (
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/ferry-project/ferry/rpc"
)

// HeaderRequestID is OpenStack's request id header.
const HeaderRequestID = "X-Openstack-Request-Id"

// requestID gives every request an id "req-<uuid>", returned in
// x-openstack-request-id and carried in the request's context
// (rpc.RequestIDFrom) into events, outbox messages and the agents' logs.
func requestID() gin.HandlerFunc {
	return func(c *gin.Context) {
		id := "req-" + uuid.NewString()
		c.Set("request_id", id)
		c.Header(HeaderRequestID, id)
		c.Request = c.Request.WithContext(rpc.WithRequestID(c.Request.Context(), id))
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
