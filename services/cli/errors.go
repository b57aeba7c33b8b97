package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
)

// httpError is an API or Keystone error reduced to what a person needs: the
// server's message, the status code and the request id.
type httpError struct {
	Code      int
	Message   string
	RequestID string
	err       error
}

func (e *httpError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	s := fmt.Sprintf("%s (HTTP %d)", strings.TrimSuffix(msg, "."), e.Code)
	if e.RequestID != "" {
		s += " (Request-ID: " + e.RequestID + ")"
	}
	return s
}

func (e *httpError) Unwrap() error { return e.err }

// apiError turns a gophercloud response error into an httpError; other
// errors pass through.
func apiError(err error) error {
	var he *httpError
	if errors.As(err, &he) {
		return err // already reduced
	}
	var ue gophercloud.ErrUnexpectedResponseCode
	if !errors.As(err, &ue) {
		return err
	}
	he = &httpError{Code: ue.Actual, Message: faultMessage(ue.Body), err: err}
	if ue.ResponseHeader != nil {
		he.RequestID = ue.ResponseHeader.Get("X-Openstack-Request-Id")
	}
	return he
}

// faultMessage reads an OpenStack fault body, {"itemNotFound": {"code":
// 404, "message": "..."}}, or Keystone's {"error": {"message": ...}}.
func faultMessage(body []byte) string {
	var fault map[string]struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &fault) == nil {
		for _, f := range fault {
			if f.Message != "" {
				return f.Message
			}
		}
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 || strings.ContainsAny(s, "<{") {
		return ""
	}
	return s
}
