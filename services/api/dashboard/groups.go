package dashboard

import (
	"cmp"
	"fmt"
	"net/http"
	"strings"
)

// --- replication groups --------------------------------------------------------

// The replication groups panel: the project's groups with their members
// count and lag against their RPO (red when breached), and a group's
// details: its members, its points in time (newest first), each with a
// Drill button, its members' drills, and the sync, pause, resume,
// failover (planned) and failback buttons. Every call goes through the
// API in-process with the session's token, like the replications panel.

func (h *Handler) groupsPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := apiCtx(r)
	defer cancel()
	gs, err := listGroups(ctx, h.ferryClient(s, r))
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	h.render(w, r, http.StatusOK, "groups", s, pageData{
		Title: "Replication groups", Nav: "groups", Breadcrumbs: []string{"Project", "Volumes", "Replication groups"},
		Body: gs,
	})
}

// groupRow is a group as the pages' script updates it.
type groupRow struct {
	ID           string `json:"id"`
	Status       string `json:"status"`
	Badge        string `json:"badge"`
	Lag          string `json:"lag"`
	RPOBreached  bool   `json:"rpo_breached"`
	MembersCount int    `json:"members_count"`
	PointsCount  int    `json:"points_count"`
	LastSync     string `json:"last_sync_at"`
	NextRun      string `json:"next_run_at"`
	LastError    string `json:"last_error"`
	Cycles       string `json:"cycles"`
	CanPause     bool   `json:"can_pause"`
	CanResume    bool   `json:"can_resume"`
	CanSync      bool   `json:"can_sync"`
	CanFailover  bool   `json:"can_failover"`
	CanFailback  bool   `json:"can_failback"`
}

func groupRowOf(g *Group) groupRow {
	return groupRow{
		ID: g.ID, Status: g.Status, Badge: replBadge(g.Status), Lag: groupLagText(g), RPOBreached: g.RPOBreached,
		MembersCount: len(g.Members), PointsCount: g.PointsCount, LastSync: whenPtr(g.LastSyncAt), NextRun: whenPtr(g.NextRunAt),
		LastError: g.LastError, Cycles: cyclesOf(g.Cycles),
		CanPause: canPause(g.Status), CanResume: canResume(g.Status), CanSync: canSync(g.Status),
		CanFailover: canFailover(g.Status), CanFailback: canFailback(g.Status),
	}
}

// groupsData is the JSON the list (and, with ?id=, the detail page)
// polls for the live lag.
func (h *Handler) groupsData(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := apiCtx(r)
	defer cancel()
	sc := h.ferryClient(s, r)
	var gs []Group
	if id := r.URL.Query().Get("id"); id != "" {
		g, err := getGroup(ctx, sc, id)
		if err != nil {
			code, msg := apiError(err)
			writeJSON(w, code, map[string]string{"error": msg})
			return
		}
		gs = []Group{*g}
	} else {
		var err error
		if gs, err = listGroups(ctx, sc); err != nil {
			code, msg := apiError(err)
			writeJSON(w, code, map[string]string{"error": msg})
			return
		}
	}
	rows := make([]groupRow, 0, len(gs))
	for i := range gs {
		rows = append(rows, groupRowOf(&gs[i]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"replication_groups": rows})
}

type groupBody struct {
	G      *Group
	Points []GroupPoint
	Drills []Drill
	// Volumes are the members' volume ids by replication id (a drill
	// names its member's replication).
	Volumes map[string]string
}

func (h *Handler) groupPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := apiCtx(r)
	defer cancel()
	sc := h.ferryClient(s, r)
	g, err := getGroup(ctx, sc, r.PathValue("id"))
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	b := groupBody{G: g, Volumes: map[string]string{}}
	for _, m := range g.Members {
		b.Volumes[m.ReplicationID] = m.VolumeID
	}
	if b.Points, err = listGroupPoints(ctx, sc, g.ID); err == nil {
		b.Drills, err = listGroupDrills(ctx, sc, g.ID)
	}
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	name := cmp.Or(g.Name, g.ID)
	h.render(w, r, http.StatusOK, "group", s, pageData{
		Title: "Replication group details: " + name, Nav: "groups",
		Breadcrumbs: []string{"Project", "Volumes", "Replication groups", name},
		Body:        b,
	})
}

// groupAction posts sync, pause, resume, drill (the form's point and
// drill_name), failover (planned) or failback to the API, then returns
// to the page with a message.
func (h *Handler) groupAction(w http.ResponseWriter, r *http.Request, s *session) {
	id, action := r.PathValue("id"), r.PathValue("action")
	label := cmp.Or(r.PostFormValue("name"), id)
	ctx, cancel := apiCtx(r)
	defer cancel()
	sc := h.ferryClient(s, r)
	var (
		err  error
		done string
	)
	switch action {
	case "sync":
		err, done = groupAction(ctx, sc, id, action), "Cycle requested for replication group: "+label
	case "pause":
		err, done = groupAction(ctx, sc, id, action), "Paused replication group: "+label
	case "resume":
		err, done = groupAction(ctx, sc, id, action), "Resumed replication group: "+label
	case "drill":
		point := strings.TrimSpace(r.PostFormValue("point"))
		var ds []Drill
		if ds, err = startGroupDrill(ctx, sc, id, point, strings.TrimSpace(r.PostFormValue("drill_name"))); err == nil {
			done = fmt.Sprintf("Drill started from point %s of replication group %s: %d member drill%s", point, label, len(ds), plural(len(ds)))
		}
	case "failover", "failback":
		var g *Group
		if g, err = startGroupFailover(ctx, sc, id, action); err == nil {
			done = fmt.Sprintf("%s started for replication group %s (%s)", strings.ToUpper(action[:1])+action[1:], label, g.Status)
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
		s.addFlash("error", fmt.Sprintf("Unable to %s replication group %s: %s", cmp.Or(verb, action), label, msg))
	} else {
		s.addFlash("success", done)
	}
	back(w, r, Prefix+"/project/replication-groups/"+id)
}

// --- formatting --------------------------------------------------------------

// groupFormsOf is the gforms template function: the sync, pause, resume,
// failover (planned) and failback buttons of g, a Group of the list
// (small) or the *Group of its page. The buttons a status offers are a
// replication's (the API decides: 409 otherwise).
func groupFormsOf(csrf, next string, g any, small bool) ([]replForm, error) {
	var gp *Group
	switch v := g.(type) {
	case Group:
		gp = &v
	case *Group:
		gp = v
	default:
		return nil, fmt.Errorf("gforms: %T is not a replication group", g)
	}
	label := cmp.Or(gp.Name, gp.ID)
	src, dst, n := gp.Source.Region, gp.Destination.Region, len(gp.Members)
	suffix := " Group"
	if small {
		suffix = ""
	}
	forms := []replForm{
		{Action: "sync", Label: "Sync Now", Shown: canSync(gp.Status)},
		{Action: "pause", Label: "Pause" + suffix, Shown: canPause(gp.Status), Confirm: "Pause replication group " + label + "?"},
		{Action: "resume", Label: "Resume" + suffix, Shown: canResume(gp.Status)},
		{Action: "failover", Label: "Failover", Shown: canFailover(gp.Status), Danger: true,
			Confirm: fmt.Sprintf("Fail replication group %s over to %s? Its volumes in %s (%d) are quiesced, a final group cycle copies their last writes, "+
				"and the replicas become the primary volumes in %s. The volumes must be detached.", label, dst, src, n, dst)},
		{Action: "failback", Label: "Failback", Shown: canFailback(gp.Status),
			Confirm: fmt.Sprintf("Fail replication group %s back to %s? Its failed-over volumes in %s (%d) are quiesced, a final group cycle copies their last writes, "+
				"and the original volumes become the primaries again. The volumes must be detached.", label, dst, src, n)},
	}
	for i := range forms {
		f := &forms[i]
		f.Base, f.CSRF, f.Next, f.ID, f.Name, f.Small = Prefix+"/project/replication-groups", csrf, next, gp.ID, gp.Name, small
	}
	return forms, nil
}

// groupLagText is a group's lag against its RPO, as a replication's.
func groupLagText(g *Group) string {
	d, ok := g.Lag()
	return lagOf(d, ok, g.RPOSeconds)
}

func groupCyclesText(g *Group) string { return cyclesOf(g.Cycles) }

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
