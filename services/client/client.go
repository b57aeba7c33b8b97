package client

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/gophercloud/gophercloud/v2"
)

// ServiceType is the catalog type of Ferry's endpoints, and the service
// name of its microversion header (OpenStack-API-Version: volume-ferry X.Y).
const ServiceType = "volume-ferry"

// NewFerryV1 returns a client of Ferry's v1 API at the volume-ferry
// endpoint of the provider's catalog that matches eo (eo.Region; the
// public interface unless eo.Availability says otherwise). The catalog's
// endpoint is the unversioned root; the resources are under its v1/.
//
// Without a matching endpoint the error says so and wraps gophercloud's
// *gophercloud.ErrEndpointNotFound (errors.As finds it).
func NewFerryV1(pc *gophercloud.ProviderClient, eo gophercloud.EndpointOpts) (*gophercloud.ServiceClient, error) {
	eo.ApplyDefaults(ServiceType)
	if pc == nil || pc.EndpointLocator == nil {
		return nil, errors.New("volume-ferry: the provider client has no service catalog (authenticate it first, or use NewFerryV1WithEndpoint)")
	}
	url, err := pc.EndpointLocator(eo)
	if err != nil {
		var nf *gophercloud.ErrEndpointNotFound
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("no %s endpoint in the catalog for region %q (interface %s): %w", ServiceType, eo.Region, eo.Availability, err)
		}
		return nil, fmt.Errorf("%s endpoint for region %q: %w", ServiceType, eo.Region, err)
	}
	return NewFerryV1WithEndpoint(pc, url), nil
}

// NewFerryV1WithEndpoint returns a client of Ferry's v1 API at a known
// URL: the unversioned root (http://127.0.0.1:9790) or its /v1.
func NewFerryV1WithEndpoint(pc *gophercloud.ProviderClient, endpoint string) *gophercloud.ServiceClient {
	endpoint = gophercloud.NormalizeURL(endpoint)
	base := endpoint + "v1/"
	if strings.HasSuffix(strings.TrimSuffix(endpoint, "/"), "/v1") {
		base = endpoint
		endpoint = strings.TrimSuffix(strings.TrimSuffix(endpoint, "/"), "v1")
	}
	return &gophercloud.ServiceClient{
		ProviderClient: pc,
		Endpoint:       endpoint,
		ResourceBase:   base,
		Type:           ServiceType,
	}
}

// WithMicroversion returns sc if it asks for microversion v or later,
// else a copy of it that asks for v (sc itself is not changed): what a
// call needs that only exists since v. An empty sc.Microversion asks for
// none (the server's minimum, 1.0); one that is not of the form X.Y is
// taken as older than v.
func WithMicroversion(sc *gophercloud.ServiceClient, v string) *gophercloud.ServiceClient {
	if sc == nil || MicroversionAtLeast(sc.Microversion, v) {
		return sc
	}
	c := *sc
	c.Microversion = v
	if c.Type == "" { // built by hand: the header names no service without it
		c.Type = ServiceType
	}
	return &c
}

// MicroversionAtLeast tells whether microversion have ("1.1", "latest"; ""
// is none) is v or later.
func MicroversionAtLeast(have, v string) bool {
	if strings.EqualFold(have, "latest") {
		return true
	}
	hMaj, hMin, ok1 := parseMicroversion(have)
	vMaj, vMin, ok2 := parseMicroversion(v)
	if !ok1 || !ok2 {
		return false
	}
	return hMaj > vMaj || (hMaj == vMaj && hMin >= vMin)
}

func parseMicroversion(v string) (major, minor int, ok bool) {
	a, b, found := strings.Cut(v, ".")
	major, err1 := strconv.Atoi(a)
	minor, err2 := strconv.Atoi(b)
	return major, minor, found && err1 == nil && err2 == nil && major >= 0 && minor >= 0
}
