package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// An agent certificate names the agent's region and role as URI subject
// alternative names, urn:ferry:region:<region> and urn:ferry:role:<role>,
// so that each end of a data stream can check that the other is an agent
// of the region the transfer names, not merely any certificate the CA
// signed.

// RoleAgent is the role of a ferry-agent certificate.
const RoleAgent = "agent"

// ErrIdentity: a certificate does not carry the region or role required.
var ErrIdentity = errors.New("certificate identity")

const (
	uriRegion = "urn:ferry:region:"
	uriRole   = "urn:ferry:role:"
)

func identityURIs(region, role string) ([]*url.URL, error) {
	var out []*url.URL
	for _, v := range []struct{ prefix, value string }{{uriRegion, region}, {uriRole, role}} {
		if v.value == "" {
			continue
		}
		if strings.ContainsAny(v.value, ":/?#% \t\n") {
			return nil, fmt.Errorf("pki: %q cannot be a region or role name", v.value)
		}
		u, err := url.Parse(v.prefix + v.value)
		if err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
		out = append(out, u)
	}
	return out, nil
}

// Identity is the region and role a certificate names ("" when absent).
func Identity(cert *x509.Certificate) (region, role string) {
	for _, u := range cert.URIs {
		s := u.String()
		if r, ok := strings.CutPrefix(s, uriRegion); ok {
			region = r
		} else if r, ok := strings.CutPrefix(s, uriRole); ok {
			role = r
		}
	}
	return region, role
}

// CheckIdentity fails unless cert names region (when not empty) and role.
func CheckIdentity(cert *x509.Certificate, region, role string) error {
	gotRegion, gotRole := Identity(cert)
	switch {
	case role != "" && gotRole != role:
		return fmt.Errorf("%w: %q has role %q, want %q", ErrIdentity, cert.Subject.CommonName, gotRole, role)
	case region != "" && gotRegion != region:
		return fmt.Errorf("%w: %q is of region %q, want %q", ErrIdentity, cert.Subject.CommonName, gotRegion, region)
	}
	return nil
}
