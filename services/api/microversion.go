package api

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"
)

// microversion negotiates OpenStack-API-Version: volume-ferry X.Y, as the
// OpenStack API guidelines say: absent means the minimum, "latest" the
// maximum, a version outside [min, max] is 406 Not Acceptable, a malformed
// one 400. The answer names the version served, and responses vary on it;
// handlers ask atLeast which version they serve.
func microversion() gin.HandlerFunc {
	return func(c *gin.Context) {
		served, code, msg := negotiate(c.Request.Header)
		if code != 0 {
			writeError(c, code, msg)
			return
		}
		c.Set(servedKey, served)
		c.Header("OpenStack-API-Version", ServiceType+" "+served)
		c.Header("Vary", "OpenStack-API-Version")
		c.Next()
	}
}

// negotiate returns the version a request's headers ask for, or the
// status (400, 406) and message of a refusal.
func negotiate(h http.Header) (served string, code int, msg string) {
	minMaj, minMin, _ := parseMicroversion(MinMicroversion)
	maxMaj, maxMin, _ := parseMicroversion(MaxMicroversion)
	served = MinMicroversion
	for _, v := range h.Values("OpenStack-API-Version") {
		for part := range strings.SplitSeq(v, ",") {
			f := strings.Fields(part)
			if len(f) != 2 || !strings.EqualFold(f[0], ServiceType) {
				continue // another service's version
			}
			if strings.EqualFold(f[1], "latest") {
				served = MaxMicroversion
				continue
			}
			maj, minor, err := parseMicroversion(f[1])
			if err != nil {
				return "", http.StatusBadRequest, fmt.Sprintf("OpenStack-API-Version %q: %v.", part, err)
			}
			if maj != minMaj || minor < minMin || maj > maxMaj || minor > maxMin {
				return "", http.StatusNotAcceptable, fmt.Sprintf("Version %s is not supported by the API: minimum %s, maximum %s.",
					f[1], MinMicroversion, MaxMicroversion)
			}
			served = fmt.Sprintf("%d.%d", maj, minor)
		}
	}
	return served, 0, ""
}

// servedKey is the gin context key of the microversion a request is served at.
const servedKey = "microversion"

// atLeast tells whether the request is served at version v or later. A
// request that was not negotiated (outside /v1) is served at the minimum.
func atLeast(c *gin.Context, v string) bool {
	served := c.GetString(servedKey)
	if served == "" {
		served = MinMicroversion
	}
	sMaj, sMin, err1 := parseMicroversion(served)
	vMaj, vMin, err2 := parseMicroversion(v)
	if err1 != nil || err2 != nil {
		return false
	}
	return sMaj > vMaj || (sMaj == vMaj && sMin >= vMin)
}

// The resources later versions introduced: replications (1.1) and
// replication groups (1.2).
const (
	replicationsPath  = "/v1/replications"
	replicationsSince = "1.1"
	groupsPath        = "/v1/replication-groups"
	groupsSince       = "1.2"
)

// hiddenPath tells whether a request the router has no route for with its
// method is under a path its version does not have yet: then it is the
// 404 of an unknown path, not a 405 that would tell the path exists.
func hiddenPath(c *gin.Context) bool {
	p := c.Request.URL.Path
	since := ""
	for _, r := range []struct{ path, since string }{{replicationsPath, replicationsSince}, {groupsPath, groupsSince}} {
		if p == r.path || strings.HasPrefix(p, r.path+"/") {
			since = r.since
		}
	}
	if since == "" {
		return false
	}
	served, code, _ := negotiate(c.Request.Header)
	if code != 0 {
		return false
	}
	c.Set(servedKey, served)
	return !atLeast(c, since)
}

// since hides what version v introduced from requests at older versions:
// they get the 404 of a path that does not exist, before authentication,
// as the router's own 404 is.
func since(v string) gin.HandlerFunc {
	return func(c *gin.Context) {
		if !atLeast(c, v) {
			writeError(c, http.StatusNotFound, notFoundMessage)
			return
		}
		c.Next()
	}
}

func parseMicroversion(v string) (major, minor int, err error) {
	a, b, ok := strings.Cut(v, ".")
	major, err1 := strconv.Atoi(a)
	minor, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || major < 0 || minor < 0 {
		return 0, 0, fmt.Errorf("%q is not a version of the form X.Y", v)
	}
	return major, minor, nil
}
