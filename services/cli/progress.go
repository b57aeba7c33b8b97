package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progressWriter reports a transfer being waited for: on a terminal one
// redrawn line with a bar, bytes, rate and ETA; otherwise a plain line when
// the status changes and at most every plainEvery while it moves.
type progressWriter struct {
	w          io.Writer
	tty        bool
	width      int
	plainEvery time.Duration
	now        func() time.Time

	lastStatus string
	lastPlain  time.Time
	drawn      bool
}

// progressState is what one poll of the transfer shows.
type progressState struct {
	ID               string
	Status           string
	BytesTotal       int64
	BytesTransferred int64
	Progress         float64
	Rate             int64
	ETASeconds       *int64
}

func newProgressWriter(w io.Writer) *progressWriter {
	p := &progressWriter{w: w, width: 80, plainEvery: 10 * time.Second, now: time.Now}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progressWriter) update(s progressState) {
	if p.tty {
		fmt.Fprintf(p.w, "\r%-*s", p.width-1, p.line(s, true))
		p.drawn = true
		return
	}
	now := p.now()
	if s.Status == p.lastStatus && now.Sub(p.lastPlain) < p.plainEvery {
		return
	}
	p.lastStatus, p.lastPlain = s.Status, now
	fmt.Fprintf(p.w, "%s %s\n", now.UTC().Format("15:04:05"), p.line(s, false))
}

// done ends the redrawn line.
func (p *progressWriter) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

func (p *progressWriter) line(s progressState, bar bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-12s", s.Status)
	if bar {
		const n = 24
		filled := int(s.Progress / 100 * n)
		filled = min(max(filled, 0), n)
		b.WriteString(" [" + strings.Repeat("#", filled) + strings.Repeat(".", n-filled) + "]")
	}
	fmt.Fprintf(&b, " %5.1f%%", s.Progress)
	if s.BytesTotal > 0 {
		fmt.Fprintf(&b, "  %s/%s", iecBytes(s.BytesTransferred), iecBytes(s.BytesTotal))
	}
	if s.Rate > 0 {
		fmt.Fprintf(&b, "  %s/s", iecBytes(s.Rate))
	}
	if s.ETASeconds != nil {
		fmt.Fprintf(&b, "  ETA %s", (time.Duration(*s.ETASeconds) * time.Second).String())
	}
	if !bar {
		return "transfer " + s.ID + ": " + b.String()
	}
	return b.String()
}

// iecBytes prints n with a binary unit: 1.5 GiB.
func iecBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
