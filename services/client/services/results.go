package services

import (
	"fmt"
	"strings"
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
	// CephHealth is the agent's last probe of its region's cluster; nil
	// when it reported none (agents before 1.2, or no probe yet).
	CephHealth *CephHealth `json:"ceph_health"`
	// RunningTransfers and MaxTransfers say how busy the agent is; nil
	// for agents before 1.2.
	RunningTransfers *int `json:"running_transfers,omitempty"`
	MaxTransfers     *int `json:"max_transfers,omitempty"`
}

// CephHealth is a cluster's health as an agent last probed it.
type CephHealth struct {
	// Status is HEALTH_OK, HEALTH_WARN or HEALTH_ERR; nil when the probe
	// failed (Error says why, e.g. a stalled cluster that did not answer
	// in time).
	Status *string `json:"status"`
	// Checks are the health checks that matter to transfers (full and
	// nearfull OSDs and pools, slow ops, down OSDs, …), most severe first;
	// Others counts the rest.
	Checks []HealthCheck `json:"checks"`
	Others int           `json:"others"`
	Error  *string       `json:"error"`
	// CheckedAt is when the probe ran.
	CheckedAt time.Time `json:"checked_at"`
}

// HealthCheck is one failing Ceph health check.
type HealthCheck struct {
	Code     string `json:"code"`
	Severity string `json:"severity"`
	Message  string `json:"message"`
}

// Summary is the health in one line, e.g. "HEALTH_WARN: OSD_NEARFULL,
// SLOW_OPS (+1 more)" or "unknown: <error>".
func (h *CephHealth) Summary() string {
	if h == nil {
		return ""
	}
	if h.Status == nil {
		e := "no answer"
		if h.Error != nil {
			e = *h.Error
		}
		return "unknown: " + e
	}
	s := *h.Status
	codes := make([]string, 0, len(h.Checks))
	for _, c := range h.Checks {
		codes = append(codes, c.Code)
	}
	if len(codes) > 0 {
		s += ": " + strings.Join(codes, ", ")
	}
	if h.Others > 0 {
		s += fmt.Sprintf(" (+%d more)", h.Others)
	}
	return s
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
