package dashboard

import (
	"cmp"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ferry-project/ferry/services/client/replications"
)

// --- replications ------------------------------------------------------------

// The replications panel: the project's replications with their lag
// against their RPO (red when breached), and a replication's details:
// its points in time, each with a Drill button, its drills, failovers
// (with their RTO) and events, and the pause, resume, sync, failover
// (planned) and failback buttons. Every call goes through the API
// in-process with the session's token, like the transfers panel.

func (h *Handler) replicationsPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := apiCtx(r)
	defer cancel()
	rs, err := listReplications(ctx, h.ferryClient(s, r))
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	h.render(w, r, http.StatusOK, "replications", s, pageData{
		Title: "Replications", Nav: "replications", Breadcrumbs: []string{"Project", "Volumes", "Replications"},
		Body: rs,
	})
}

// replRow is a replication as the pages' script updates it.
type replRow struct {
	ID          string `json:"id"`
	Status      string `json:"status"`
	Badge       string `json:"badge"`
	Lag         string `json:"lag"`
	RPOBreached bool   `json:"rpo_breached"`
	PointsCount int    `json:"points_count"`
	LastSync    string `json:"last_sync_at"`
	NextRun     string `json:"next_run_at"`
	LastError   string `json:"last_error"`
	BytesLast   string `json:"bytes_last_cycle"`
	Cycles      string `json:"cycles"`
	CanPause    bool   `json:"can_pause"`
	CanResume   bool   `json:"can_resume"`
	CanSync     bool   `json:"can_sync"`
	CanFailover bool   `json:"can_failover"`
	CanFailback bool   `json:"can_failback"`
}

func replRowOf(rp *Replication) replRow {
	return replRow{
		ID: rp.ID, Status: rp.Status, Badge: replBadge(rp.Status), Lag: lagText(rp), RPOBreached: rp.RPOBreached,
		PointsCount: rp.PointsCount, LastSync: whenPtr(rp.LastSyncAt), NextRun: whenPtr(rp.NextRunAt), LastError: rp.LastError,
		BytesLast: humanBytes(rp.BytesLastCycle), Cycles: cyclesText(rp),
		CanPause: canPause(rp.Status), CanResume: canResume(rp.Status), CanSync: canSync(rp.Status),
		CanFailover: canFailover(rp.Status), CanFailback: canFailback(rp.Status),
	}
}

// replicationsData is the JSON the list (and, with ?id=, the detail page)
// polls for the live lag.
func (h *Handler) replicationsData(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := apiCtx(r)
	defer cancel()
	sc := h.ferryClient(s, r)
	var rs []Replication
	if id := r.URL.Query().Get("id"); id != "" {
		rp, err := getReplication(ctx, sc, id)
		if err != nil {
			code, msg := apiError(err)
			writeJSON(w, code, map[string]string{"error": msg})
			return
		}
		rs = []Replication{*rp}
	} else {
		var err error
		if rs, err = listReplications(ctx, sc); err != nil {
			code, msg := apiError(err)
			writeJSON(w, code, map[string]string{"error": msg})
			return
		}
	}
	rows := make([]replRow, 0, len(rs))
	for i := range rs {
		rows = append(rows, replRowOf(&rs[i]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"replications": rows})
}

type replicationBody struct {
	R         *Replication
	Points    []Point
	Drills    []Drill
	Failovers []Failover
	Events    []ReplEvent
}

func (h *Handler) replicationPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := apiCtx(r)
	defer cancel()
	sc := h.ferryClient(s, r)
	rp, err := getReplication(ctx, sc, r.PathValue("id"))
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	b := replicationBody{R: rp}
	if b.Points, err = listPoints(ctx, sc, rp.ID); err == nil {
		if b.Drills, err = listDrills(ctx, sc, rp.ID); err == nil {
			if b.Failovers, err = listFailovers(ctx, sc, rp.ID); err == nil {
				b.Events, err = listReplEvents(ctx, sc, rp.ID)
			}
		}
	}
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	name := rp.Name
	if name == "" {
		name = rp.ID
	}
	h.render(w, r, http.StatusOK, "replication", s, pageData{
		Title: "Replication details: " + name, Nav: "replications",
		Breadcrumbs: []string{"Project", "Volumes", "Replications", name},
		Body:        b,
	})
}

// replicationAction posts sync, pause, resume, drill (the form's point
// and drill_name), failover (planned) or failback to the API, then
// returns to the page with a message.
func (h *Handler) replicationAction(w http.ResponseWriter, r *http.Request, s *session) {
	id, action := r.PathValue("id"), r.PathValue("action")
	label := r.PostFormValue("name")
	if label == "" {
		label = id
	}
	ctx, cancel := apiCtx(r)
	defer cancel()
	sc := h.ferryClient(s, r)
	var (
		err  error
		done string
	)
	switch action {
	case "sync":
		err, done = replicationAction(ctx, sc, id, action), "Cycle requested for replication: "+label
	case "pause":
		err, done = replicationAction(ctx, sc, id, action), "Paused replication: "+label
	case "resume":
		err, done = replicationAction(ctx, sc, id, action), "Resumed replication: "+label
	case "drill":
		point := strings.TrimSpace(r.PostFormValue("point"))
		var d *Drill
		if d, err = startDrill(ctx, sc, id, point, strings.TrimSpace(r.PostFormValue("drill_name"))); err == nil {
			done = fmt.Sprintf("Drill %s started from point %s of replication %s", d.ID, d.Point, label)
		}
	case "failover", "failback":
		var f *Failover
		if f, err = startFailover(ctx, sc, id, action); err == nil {
			done = fmt.Sprintf("%s %s started for replication %s", strings.ToUpper(action[:1])+action[1:], f.ID, label)
		}
	default:
		h.errorPage(w, r, s, http.StatusNotFound, "Page not found", "Unknown action "+action+".")
		return
	}
	if err != nil {
		code, msg := apiError(err)
		if code == http.StatusUnauthorized {
			h.sessions.remove(s.id)
			h.toLogin(w, r, "", true)
			return
		}
		verb := map[string]string{"failover": "fail over", "failback": "fail back"}[action]
		s.addFlash("error", fmt.Sprintf("Unable to %s replication %s: %s", cmp.Or(verb, action), label, msg))
	} else {
		s.addFlash("success", done)
	}
	back(w, r, Prefix+"/project/replications/"+id)
}

// --- formatting --------------------------------------------------------------

func replBadge(status string) string {
	switch status {
	case "active", "failed_over":
		return "ok"
	case "error":
		return "err"
	case "paused":
		return "muted"
	}
	return "busy"
}

// The buttons a status offers; the API decides (409 otherwise).
func canPause(status string) bool  { return status == "active" }
func canResume(status string) bool { return status == "paused" || status == "error" }
func canSync(status string) bool   { return status == "active" || status == "failed_over" }

// replForm is one action button of a replication (or a replication
// group): a form posting to Base/{id}/{Action}, shown while its
// can_<Action> is true (the "repl-form" template of layout.html).
type replForm struct {
	Base, CSRF, Next, ID, Name, Action, Label, Confirm string
	Shown, Small, Danger                               bool
}

// replFormsOf is the rforms template function: the sync, pause, resume,
// failover (planned) and failback buttons of r, a Replication of the
// list (small) or the *Replication of its page.
func replFormsOf(csrf, next string, r any, small bool) ([]replForm, error) {
	var rp *Replication
	switch v := r.(type) {
	case Replication:
		rp = &v
	case *Replication:
		rp = v
	default:
		return nil, fmt.Errorf("rforms: %T is not a replication", r)
	}
	label := cmp.Or(rp.Name, rp.ID)
	src, dst := rp.Source.Region, rp.Destination.Region
	suffix := " Replication"
	if small {
		suffix = ""
	}
	forms := []replForm{
		{Action: "sync", Label: "Sync Now", Shown: canSync(rp.Status)},
		{Action: "pause", Label: "Pause" + suffix, Shown: canPause(rp.Status), Confirm: "Pause replication " + label + "?"},
		{Action: "resume", Label: "Resume" + suffix, Shown: canResume(rp.Status)},
		{Action: "failover", Label: "Failover", Shown: canFailover(rp.Status), Danger: true,
			Confirm: fmt.Sprintf("Fail replication %s over to %s? Its source volume in %s is made read-only, a final cycle copies its last writes, "+
				"and the replica becomes the primary volume in %s. The source volume must be detached.", label, dst, src, dst)},
		{Action: "failback", Label: "Failback", Shown: canFailback(rp.Status),
			Confirm: fmt.Sprintf("Fail replication %s back to %s? The failed-over volume in %s is made read-only, a final cycle copies its last writes, "+
				"and the original volume becomes the primary again. The failed-over volume must be detached.", label, dst, src)},
	}
	for i := range forms {
		f := &forms[i]
		f.Base, f.CSRF, f.Next, f.ID, f.Name, f.Small = Prefix+"/project/replications", csrf, next, rp.ID, rp.Name, small
	}
	return forms, nil
}

// canFailover offers the planned failover (an unplanned one, to a point,
// also from error, is the CLI's and the API's).
func canFailover(status string) bool { return status == "active" || status == "paused" }
func canFailback(status string) bool { return status == "failed_over" }

// runBadge is the badge of a drill's or a failover's status: available
// or done, error, else under way.
func runBadge(status string) string {
	switch status {
	case "available", "done":
		return "ok"
	case "error":
		return "err"
	}
	return "busy"
}

// lagText is the lag against the RPO: "42s / RPO 15m 00s", or "no point
// yet / RPO 2m 00s" before the first point.
func lagText(rp *Replication) string {
	d, ok := rp.Lag()
	return lagOf(d, ok, rp.RPOSeconds)
}

// lagOf is a lag (known: ok) against an RPO of rpo seconds.
func lagOf(d time.Duration, ok bool, rpo int) string {
	lag := "no point yet"
	if ok {
		lag = humanDuration(d)
	}
	return lag + " / RPO " + humanDuration(time.Duration(rpo)*time.Second)
}

func humanDuration(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd %02dh", int(d.Hours())/24, int(d.Hours())%24)
}

func secondsText(n int) string { return humanDuration(time.Duration(n) * time.Second) }

// rtoText is a drill's or a failover's time to available (its
// rto_seconds), "-" until then.
func rtoText(rto *float64) string {
	if rto == nil {
		return "-"
	}
	return humanDuration(time.Duration(*rto * float64(time.Second)))
}

func cyclesText(rp *Replication) string { return cyclesOf(rp.Cycles) }

func cyclesOf(c replications.Cycles) string {
	return fmt.Sprintf("%d completed, %d failed, %d skipped", c.Completed, c.Failed, c.Skipped)
}

func replSourceText(rp *Replication) string {
	if rp.Source.VolumeID != "" {
		return "volume " + rp.Source.VolumeID
	}
	return rp.Source.Pool + "/" + rp.Source.Image
}

func bandwidthText(n int64) string {
	if n <= 0 {
		return "agents' default"
	}
	return humanBytes(n) + "/s"
}
