package api

import (
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"github.com/ferry-project/ferry/services/internal/config"
)

// trustedProxies are the reverse proxies of [api] trusted_proxies. Only
// their forwarding headers are believed: from anyone else the headers are
// removed before any handler sees them, so that neither the links the API
// writes, nor the dashboard's Secure cookies and origin checks, nor a
// redirect, nor the client address of the login throttle can be steered by
// a client.
type trustedProxies struct{ nets []netip.Prefix }

// forwardingHeaders are the headers a proxy sets about the client.
var forwardingHeaders = []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Prefix",
	"X-Forwarded-Port", "X-Real-Ip", "Forwarded"}

func newTrustedProxies(cidrs []string) (trustedProxies, error) {
	var p trustedProxies
	for _, c := range cidrs {
		n, err := config.ParseCIDROrIP(c)
		if err != nil {
			return trustedProxies{}, err
		}
		p.nets = append(p.nets, n)
	}
	return p, nil
}

func (p trustedProxies) trusts(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, n := range p.nets {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

func remoteAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, _ := netip.ParseAddr(host)
	return a
}

// handler strips the forwarding headers of untrusted peers; for a trusted
// proxy it makes RemoteAddr the client's address: the right-most address of
// X-Forwarded-For that is not itself a trusted proxy.
func (p trustedProxies) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !p.trusts(remoteAddr(r)) {
			for _, h := range forwardingHeaders {
				r.Header.Del(h)
			}
			next.ServeHTTP(w, r)
			return
		}
		var hops []string
		for _, v := range r.Header.Values("X-Forwarded-For") {
			hops = append(hops, strings.Split(v, ",")...)
		}
		for i := len(hops) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				break
			}
			if !p.trusts(a) || i == 0 {
				r.RemoteAddr = net.JoinHostPort(a.Unmap().String(), "0")
				break
			}
		}
		next.ServeHTTP(w, r)
	})
}

// forwardedProto is a trusted proxy's X-Forwarded-Proto, "http" or
// "https" ("" when absent or anything else).
func forwardedProto(r *http.Request) string {
	switch p := strings.ToLower(strings.TrimSpace(r.Header.Get("X-Forwarded-Proto"))); p {
	case "http", "https":
		return p
	}
	return ""
}

// forwardedHost is a trusted proxy's X-Forwarded-Host when it is a plain
// host[:port] ("" otherwise).
func forwardedHost(r *http.Request) string {
	h := strings.TrimSpace(r.Header.Get("X-Forwarded-Host"))
	if i := strings.IndexByte(h, ','); i >= 0 { // several proxies: the first is the client's
		h = strings.TrimSpace(h[:i])
	}
	if h == "" || strings.ContainsAny(h, "/\\@?#% \t") {
		return ""
	}
	if u, err := url.Parse("http://" + h); err != nil || u.Host != h {
		return ""
	}
	return h
}
