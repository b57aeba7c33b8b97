package rbd

import (
	"slices"
	"testing"
	"time"
)

func TestOptionsSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want [][2]string
	}{
		{"default", Options{}, [][2]string{{"client_mount_timeout", "60"}, {"rados_mon_op_timeout", "60"}, {"rados_osd_op_timeout", "60"}}},
		{"configured", Options{Timeout: 7 * time.Second}, [][2]string{{"client_mount_timeout", "7"}, {"rados_mon_op_timeout", "7"}, {"rados_osd_op_timeout", "7"}}},
		// 0 would mean "no timeout" to librados: never below one second.
		{"sub-second", Options{Timeout: 300 * time.Millisecond}, [][2]string{{"client_mount_timeout", "1"}, {"rados_mon_op_timeout", "1"}, {"rados_osd_op_timeout", "1"}}},
		{"keyring", Options{Timeout: 30 * time.Second, Keyring: "/k"}, [][2]string{{"client_mount_timeout", "30"}, {"rados_mon_op_timeout", "30"}, {"rados_osd_op_timeout", "30"}, {"keyring", "/k"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.o.settings(); !slices.Equal(got, tc.want) {
				t.Errorf("settings() = %v, want %v", got, tc.want)
			}
		})
	}
	if got, want := (Options{Timeout: 5 * time.Second}).connectTimeout(), 15*time.Second; got != want {
		t.Errorf("connectTimeout = %v, want %v", got, want)
	}
}

func TestParseHealth(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    Health
		wantErr bool
	}{
		{"ok", `{"status":"HEALTH_OK","checks":{},"mutes":[]}`, Health{Status: "HEALTH_OK"}, false},
		{"warn and err sorted, muted left out", `{"status":"HEALTH_ERR","checks":{
			"SLOW_OPS":{"severity":"HEALTH_WARN","summary":{"message":"1 slow ops, oldest one blocked for 600 sec","count":1},"muted":false},
			"OSD_FULL":{"severity":"HEALTH_ERR","summary":{"message":"1 full osd(s)","count":1},"muted":false},
			"OSD_NEARFULL":{"severity":"HEALTH_WARN","summary":{"message":"1 nearfull osd(s)","count":1},"muted":false},
			"POOL_NO_REDUNDANCY":{"severity":"HEALTH_WARN","summary":{"message":"1 pool(s) have no replicas configured","count":1},"muted":true}}}`,
			Health{Status: "HEALTH_ERR", Checks: []HealthCheck{
				{"OSD_FULL", "HEALTH_ERR", "1 full osd(s)"},
				{"OSD_NEARFULL", "HEALTH_WARN", "1 nearfull osd(s)"},
				{"SLOW_OPS", "HEALTH_WARN", "1 slow ops, oldest one blocked for 600 sec"},
			}}, false},
		{"not json", `HEALTH_OK`, Health{}, true},
		{"no status", `{"checks":{}}`, Health{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseHealth([]byte(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %t", err, tc.wantErr)
			}
			if got.Status != tc.want.Status || !slices.Equal(got.Checks, tc.want.Checks) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
