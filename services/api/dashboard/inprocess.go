package dashboard

import (
	"net/http"
	"net/http/httptest"

	"github.com/gophercloud/gophercloud/v2"
)

// inProcess is an http.RoundTripper that serves a request with the API's
// own handler: the dashboard calls ferry-api like any client (token,
// authentication middleware, policy) without a network hop.
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		defer req.Body.Close()
	}
	r := req.Clone(req.Context())
	if r.Body == nil {
		r.Body = http.NoBody
	}
	r.RequestURI = req.URL.RequestURI()
	if r.Host == "" {
		r.Host = req.URL.Host
	}
	r.RemoteAddr = "127.0.0.1:0"
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// ferryClient is a client of the API acting with a session's token.
func (h *Handler) ferryClient(s *session, r *http.Request) *gophercloud.ServiceClient {
	pc := &gophercloud.ProviderClient{HTTPClient: http.Client{Transport: inProcess{h: h.opts.API}}, UserAgent: gophercloud.UserAgent{}}
	pc.UserAgent.Prepend("ferry-dashboard")
	pc.SetToken(s.token)
	return newFerryClient(pc, "http://"+r.Host)
}
