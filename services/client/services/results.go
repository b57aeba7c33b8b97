package services

import (
	"time"

	"github.com/gophercloud/gophercloud/v2/pagination"
)

// Service is a Ferry daemon that reports heartbeats.
type Service struct {
	// Binary is the daemon, e.g. ferry-agent.
	Binary string `json:"binary"`
	Host   string `json:"host"`
	Region string `json:"region"`
	// State is "up" or "down" (heartbeat age).
	State string `json:"state"`
	// Status is "enabled" or "disabled".
	Status  string `json:"status"`
	Version string `json:"version"`
	// UpdatedAt is the last heartbeat.
	UpdatedAt time.Time `json:"updated_at"`
}

// ServicePage is the single page of List.
type ServicePage struct {
	pagination.SinglePageBase
}

// IsEmpty reports whether the page holds no service.
func (r ServicePage) IsEmpty() (bool, error) {
	if r.StatusCode == 204 {
		return true, nil
	}
	s, err := ExtractServices(r)
	return len(s) == 0, err
}

// ExtractServices returns the services of a page of List.
func ExtractServices(r pagination.Page) ([]Service, error) {
	var s []Service
	err := r.(ServicePage).ExtractIntoSlicePtr(&s, "services")
	return s, err
}
