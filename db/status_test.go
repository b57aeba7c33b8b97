package db

import (
	"errors"
	"testing"
)

func TestStatusPredicates(t *testing.T) {
	tests := []struct {
		s                       Status
		terminal, active, valid bool
	}{
		{StatusQueued, false, false, true},
		{StatusAccepted, false, true, true},
		{StatusPreparing, false, true, true},
		{StatusTransferring, false, true, true},
		{StatusVerifying, false, true, true},
		{StatusFinalizing, false, true, true},
		{StatusCompleted, true, false, true},
		{StatusError, true, false, true},
		{StatusCancelling, false, false, true},
		{StatusCancelled, true, false, true},
		{"", false, false, false},
		{"Queued", false, false, false},
	}
	for _, tt := range tests {
		if got := IsTerminal(tt.s); got != tt.terminal {
			t.Errorf("IsTerminal(%q) = %v", tt.s, got)
		}
		if got := IsActive(tt.s); got != tt.active {
			t.Errorf("IsActive(%q) = %v", tt.s, got)
		}
		if got := tt.s.Valid(); got != tt.valid {
			t.Errorf("%q.Valid() = %v", tt.s, got)
		}
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		in      string
		want    Status
		wantErr bool
	}{
		{"queued", StatusQueued, false},
		{" Completed ", StatusCompleted, false},
		{"CANCELLING", StatusCancelling, false},
		{"", "", true},
		{"done", "", true},
	}
	for _, tt := range tests {
		got, err := ParseStatus(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseStatus(%q) = %q, %v", tt.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ParseStatus(%q) error %v does not wrap ErrInvalidArgument", tt.in, err)
		}
	}
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		in      string
		want    Mode
		wantErr bool
	}{
		{"", ModeAuto, false},
		{"auto", ModeAuto, false},
		{"Full", ModeFull, false},
		{"incremental", ModeIncremental, false},
		{"diff", "", true},
	}
	for _, tt := range tests {
		got, err := ParseMode(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseMode(%q) = %q, %v", tt.in, got, err)
		}
	}
}

func TestEventKindFor(t *testing.T) {
	tests := []struct {
		from, to Status
		want     EventKind
	}{
		{"", StatusQueued, EventStatus},
		{StatusQueued, StatusAccepted, EventStatus},
		{StatusTransferring, StatusError, EventError},
		{StatusError, StatusQueued, EventRetry},
		{StatusTransferring, StatusQueued, EventRequeue},
		{StatusCancelling, StatusCancelled, EventStatus},
	}
	for _, tt := range tests {
		if got := eventKindFor(tt.from, tt.to); got != tt.want {
			t.Errorf("eventKindFor(%q, %q) = %q, want %q", tt.from, tt.to, got, tt.want)
		}
	}
}

func TestProgressAndETA(t *testing.T) {
	tests := []struct {
		name  string
		tr    Transfer
		pct   float64
		eta   int64
		etaOK bool
	}{
		{"unknown total", Transfer{Status: StatusTransferring, BytesTransferred: 5}, 0, 0, false},
		{"half", Transfer{Status: StatusTransferring, BytesTotal: 200, BytesTransferred: 100, RateBytesPerSecond: 30}, 50, 4, true},
		{"over", Transfer{Status: StatusVerifying, BytesTotal: 100, BytesTransferred: 150, RateBytesPerSecond: 1}, 100, 0, true},
		{"completed", Transfer{Status: StatusCompleted}, 100, 0, false},
		{"finalizing a sparse copy", Transfer{Status: StatusFinalizing, BytesTotal: 1000, BytesTransferred: 50, RateBytesPerSecond: 9}, 100, 0, false},
		{"queued", Transfer{Status: StatusQueued, BytesTotal: 10, RateBytesPerSecond: 1}, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.tr.ProgressPercent(); got != tt.pct {
				t.Errorf("ProgressPercent = %v, want %v", got, tt.pct)
			}
			eta, ok := tt.tr.ETASeconds()
			if eta != tt.eta || ok != tt.etaOK {
				t.Errorf("ETASeconds = %d, %v; want %d, %v", eta, ok, tt.eta, tt.etaOK)
			}
		})
	}
}
