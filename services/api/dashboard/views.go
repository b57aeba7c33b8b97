package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferry-project/ferry/db/state"
	"github.com/ferry-project/ferry/services/client/services"
)

// pageData is what every page's template gets.
type pageData struct {
	Title       string
	Nav         string // active left-nav entry: transfers, replications, groups, services
	Breadcrumbs []string
	Session     *sessionView
	Flashes     []flash
	Next        string // this page, for the forms that come back to it
	Body        any
}

// sessionView is the top bar's and the nav's view of a session.
type sessionView struct {
	User, Project, Domain string
	Regions               []string
	Region                string
	IsAdmin, CanWrite     bool
	CSRF                  string
}

func viewOf(s *session) *sessionView {
	if s == nil {
		return nil
	}
	return &sessionView{User: s.userName, Project: s.projectName, Domain: s.domain, Regions: s.regions,
		Region: s.selectedRegion(), IsAdmin: s.isAdmin(), CanWrite: s.canWrite(), CSRF: s.csrf}
}

var funcs = template.FuncMap{
	"bytes":     humanBytes,
	"rate":      humanRate,
	"eta":       humanETA,
	"when":      when,
	"whenp":     func(t *time.Time) string { return whenPtr(t) },
	"terminal":  terminal,
	"badge":     badgeClass,
	"pct":       func(p float64) string { return fmt.Sprintf("%.0f%%", p) },
	"progress":  progressText,
	"unsized":   unsized,
	"source":    sourceText,
	"dest":      destText,
	"shortid":   func(id string) string { return id[:min(8, len(id))] },
	"transient": func(st string) bool { return !terminal(st) },
	"health":    healthBadge,
	"load":      loadText,
	// replications
	"rbadge":    replBadge,
	"lag":       lagText,
	"secs":      secondsText,
	"rto":       rtoText,
	"cycles":    cyclesText,
	"rsource":   replSourceText,
	"bandwidth": bandwidthText,
	"rforms":    replFormsOf,
	"runbadge":  runBadge,
	// replication groups
	"glag":    groupLagText,
	"gcycles": groupCyclesText,
	"gforms":  groupFormsOf,
}

// healthBadge is the badge class and text of an agent's cluster health.
func healthBadge(h *services.CephHealth) struct{ Class, Text string } {
	switch {
	case h == nil:
		return struct{ Class, Text string }{"badge-muted", "not reported"}
	case h.Status == nil:
		return struct{ Class, Text string }{"badge-err", "unknown"}
	case *h.Status == "HEALTH_OK":
		return struct{ Class, Text string }{"badge-ok", *h.Status}
	case *h.Status == "HEALTH_WARN":
		return struct{ Class, Text string }{"badge-busy", *h.Status}
	}
	return struct{ Class, Text string }{"badge-err", *h.Status}
}

// loadText is "running/max" transfers of an agent, "-" when unknown.
func loadText(running, capacity *int) string {
	if running == nil {
		return "-"
	}
	if capacity == nil || *capacity == 0 {
		return strconv.Itoa(*running)
	}
	return fmt.Sprintf("%d/%d", *running, *capacity)
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, code int, name string, s *session, d pageData) {
	t, ok := h.pages[name]
	if !ok {
		http.Error(w, "no template "+name, http.StatusInternalServerError)
		return
	}
	d.Session = viewOf(s)
	if s != nil {
		d.Flashes = append(s.takeFlashes(), d.Flashes...)
	}
	if d.Next == "" {
		d.Next = r.URL.RequestURI()
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout.html", d); err != nil {
		h.opts.Logger.Error("dashboard: template", "page", name, "error", err)
		http.Error(w, "The dashboard could not render this page.", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

func (h *Handler) errorPage(w http.ResponseWriter, r *http.Request, s *session, code int, title, msg string) {
	h.render(w, r, code, "error", s, pageData{Title: title, Breadcrumbs: []string{"Error"}, Body: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// apiFailed handles an API error on a page: an expired token ends the
// session; anything else is an error page with the API's message.
func (h *Handler) apiFailed(w http.ResponseWriter, r *http.Request, s *session, err error) {
	code, msg := apiError(err)
	if code == http.StatusUnauthorized {
		h.sessions.remove(s.id)
		h.toLogin(w, r, r.URL.RequestURI(), true)
		return
	}
	if code >= 500 {
		h.opts.Logger.Error("dashboard: API call failed", "path", r.URL.Path, "error", err)
	}
	h.errorPage(w, r, s, code, http.StatusText(code), msg)
}

func apiCtx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 30*time.Second)
}

// --- login and logout ----------------------------------------------------

type loginForm struct {
	Username, Project, Domain, Next string
	CSRF                            string
	Error, Info                     string
}

func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	if h.currentSession(r) != nil {
		http.Redirect(w, r, Prefix+"/project/transfers", http.StatusSeeOther)
		return
	}
	f := loginForm{Domain: "Default", Next: r.URL.Query().Get("next")}
	switch r.URL.Query().Get("msg") {
	case "expired":
		f.Info = "Your session has expired. Please log in again."
	case "logout":
		f.Info = "You have been logged out."
	}
	h.showLogin(w, r, http.StatusOK, f)
}

// showLogin renders the login form with its pre-session CSRF token: a
// cookie and the same value in a hidden field (double submit).
func (h *Handler) showLogin(w http.ResponseWriter, r *http.Request, code int, f loginForm) {
	tok := ""
	if c, err := r.Cookie(loginCSRF); err == nil && len(c.Value) == 43 {
		tok = c.Value
	} else {
		tok = randomToken()
	}
	h.setCookie(w, r, loginCSRF, tok, Prefix+"/auth", 3600)
	f.CSRF = tok
	if !safeNext(f.Next) {
		f.Next = ""
	}
	h.render(w, r, code, "login", nil, pageData{Title: "Log in", Body: f})
}

func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	c, err := r.Cookie(loginCSRF)
	if err != nil || !equalTokens(r.PostFormValue(csrfField), c.Value) {
		h.forbidden(w, r, "CSRF verification failed: reload the login page and try again.")
		return
	}
	f := loginForm{
		Username: strings.TrimSpace(r.PostFormValue("username")), Project: strings.TrimSpace(r.PostFormValue("project")),
		Domain: strings.TrimSpace(r.PostFormValue("domain")), Next: r.PostFormValue("next"),
	}
	if f.Domain == "" {
		f.Domain = "Default"
	}
	password := r.PostFormValue("password")
	if f.Username == "" || password == "" || f.Project == "" {
		f.Error = "User name, password and project are required."
		h.showLogin(w, r, http.StatusOK, f)
		return
	}
	// Password guessing is throttled per user name and per client address
	// (the proxy-given one behind a trusted proxy), before Keystone is asked.
	userKey, addrKey := strings.ToLower(f.Domain+"\x00"+f.Username), clientAddr(r)
	wait, userBlocked := h.userThrottle.blocked(userKey)
	if addrWait, addrBlocked := h.addrThrottle.blocked(addrKey); addrBlocked {
		wait, userBlocked = max(wait, addrWait), true
	}
	if userBlocked {
		h.opts.Logger.Warn("dashboard: login throttled", "user", f.Username, "client", addrKey)
		secs := int(wait.Round(time.Second) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
		f.Error = fmt.Sprintf("Too many failed login attempts. Try again in %d seconds.", max(secs, 1))
		h.showLogin(w, r, http.StatusTooManyRequests, f)
		return
	}
	ctx, cancel := apiCtx(r)
	defer cancel()
	s, err := h.authenticate(ctx, credentials{username: f.Username, password: password, project: f.Project, domain: f.Domain})
	switch {
	case errors.Is(err, errBadCredentials):
		h.opts.Logger.Info("dashboard: login refused", "user", f.Username, "project", f.Project, "domain", f.Domain)
		h.userThrottle.fail(userKey)
		h.addrThrottle.fail(addrKey)
		f.Error = "Invalid credentials."
		h.showLogin(w, r, http.StatusUnauthorized, f)
		return
	case err != nil:
		h.opts.Logger.Error("dashboard: login failed", "user", f.Username, "error", err)
		f.Error = "Unable to reach the identity service. Try again later."
		h.showLogin(w, r, http.StatusServiceUnavailable, f)
		return
	}
	// A fresh session id at every login (no fixation); the old one ends.
	if old, err := r.Cookie(sessionCookie); err == nil {
		h.sessions.remove(old.Value)
	}
	h.userThrottle.reset(userKey)
	h.sessions.add(s)
	h.opts.Logger.Info("dashboard: login", "user", s.userName, "project", s.projectName)
	h.setCookie(w, r, sessionCookie, s.id, Prefix, 0)
	h.setCookie(w, r, loginCSRF, "", Prefix+"/auth", -1)
	next := Prefix + "/project/transfers"
	if safeNext(f.Next) {
		next = f.Next
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request, s *session) {
	h.sessions.remove(s.id)
	ctx, cancel := apiCtx(r)
	defer cancel()
	h.revoke(ctx, s.token)
	h.setCookie(w, r, sessionCookie, "", Prefix, -1)
	http.Redirect(w, r, Prefix+"/auth/login?msg=logout", http.StatusSeeOther)
}

func (h *Handler) selectRegion(w http.ResponseWriter, r *http.Request, s *session) {
	region := r.PostFormValue("region")
	if !slices.Contains(s.regions, region) {
		s.addFlash("error", fmt.Sprintf("Unknown region %q.", region))
	} else {
		s.setRegion(region)
	}
	back(w, r, Prefix+"/project/transfers")
}

// back redirects to the form's next field, a dashboard page.
func back(w http.ResponseWriter, r *http.Request, fallback string) {
	next := r.PostFormValue("next")
	if !safeNext(next) {
		next = fallback
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// --- transfers -------------------------------------------------------------

type transfersBody struct {
	Transfers []Transfer
	Region    string
	Total     int
}

// regionTransfers lists the project's transfers whose source is the
// selected region.
func (h *Handler) regionTransfers(r *http.Request, s *session) ([]Transfer, int, error) {
	ctx, cancel := apiCtx(r)
	defer cancel()
	out, err := listTransfers(ctx, h.ferryClient(s, r), s.selectedRegion())
	if err != nil {
		return nil, 0, err
	}
	return out, len(out), nil
}

func (h *Handler) transfersPage(w http.ResponseWriter, r *http.Request, s *session) {
	ts, total, err := h.regionTransfers(r, s)
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	h.render(w, r, http.StatusOK, "transfers", s, pageData{
		Title: "Cross-region transfers", Nav: "transfers", Breadcrumbs: []string{"Project", "Volumes", "Cross-region transfers"},
		Body: transfersBody{Transfers: ts, Region: s.selectedRegion(), Total: total},
	})
}

// rowData is a transfer as the pages' script updates it.
type rowData struct {
	ID         string  `json:"id"`
	Status     string  `json:"status"`
	Badge      string  `json:"badge"`
	Progress   float64 `json:"progress"`
	ProgressTx string  `json:"progress_text"`
	Bytes      string  `json:"bytes"`
	Rate       string  `json:"rate"`
	ETA        string  `json:"eta"`
	Terminal   bool    `json:"terminal"`
	Unsized    bool    `json:"unsized"`
	CanCancel  bool    `json:"can_cancel"`
	CanRetry   bool    `json:"can_retry"`
	CanDelete  bool    `json:"can_delete"`
	Error      string  `json:"error"`
	Updated    string  `json:"updated_at"`
	Started    string  `json:"started_at"`
	Finished   string  `json:"finished_at"`
	Digest     string  `json:"digest"`
}

func rowOf(t *Transfer) rowData {
	return rowData{
		ID: t.ID, Status: t.Status, Badge: badgeClass(t.Status), Progress: t.Progress, ProgressTx: progressText(t), Unsized: unsized(t),
		Bytes: humanBytes(t.BytesTransferred) + " / " + humanBytes(t.BytesTotal), Rate: humanRate(t), ETA: humanETA(t),
		Terminal: terminal(t.Status), CanCancel: state.CanCancel(state.Status(t.Status)), CanRetry: state.CanRetry(state.Status(t.Status)),
		CanDelete: terminal(t.Status), Error: t.Error, Updated: when(t.UpdatedAt), Started: whenPtr(t.StartedAt),
		Finished: whenPtr(t.FinishedAt), Digest: t.Digest,
	}
}

// transfersData is the JSON the table (and, with ?id=, the detail page)
// polls for live progress.
func (h *Handler) transfersData(w http.ResponseWriter, r *http.Request, s *session) {
	var ts []Transfer
	if id := r.URL.Query().Get("id"); id != "" {
		ctx, cancel := apiCtx(r)
		defer cancel()
		t, err := getTransfer(ctx, h.ferryClient(s, r), id)
		if err != nil {
			code, msg := apiError(err)
			writeJSON(w, code, map[string]string{"error": msg})
			return
		}
		ts = []Transfer{*t}
	} else {
		var err error
		if ts, _, err = h.regionTransfers(r, s); err != nil {
			code, msg := apiError(err)
			writeJSON(w, code, map[string]string{"error": msg})
			return
		}
	}
	rows := make([]rowData, 0, len(ts))
	for i := range ts {
		rows = append(rows, rowOf(&ts[i]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"transfers": rows})
}

type detailBody struct {
	T      *Transfer
	Events []Event
}

func (h *Handler) detailPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := apiCtx(r)
	defer cancel()
	sc := h.ferryClient(s, r)
	t, err := getTransfer(ctx, sc, r.PathValue("id"))
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	events, err := listEvents(ctx, sc, t.ID)
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	name := t.Name
	if name == "" {
		name = t.ID
	}
	h.render(w, r, http.StatusOK, "detail", s, pageData{
		Title: "Transfer details: " + name, Nav: "transfers",
		Breadcrumbs: []string{"Project", "Volumes", "Cross-region transfers", name},
		Body:        detailBody{T: t, Events: events},
	})
}

func (h *Handler) action(w http.ResponseWriter, r *http.Request, s *session) {
	id, action := r.PathValue("id"), r.PathValue("action")
	ctx, cancel := apiCtx(r)
	defer cancel()
	sc := h.ferryClient(s, r)
	var err error
	var done string
	switch action {
	case "cancel":
		err, done = transferAction(ctx, sc, id, "cancel"), "Cancel requested for transfer: %s"
	case "retry":
		err, done = transferAction(ctx, sc, id, "retry"), "Retry requested for transfer: %s"
	case "delete":
		err, done = deleteTransfer(ctx, sc, id), "Deleted transfer: %s"
	default:
		h.errorPage(w, r, s, http.StatusNotFound, "Page not found", "Unknown action "+action+".")
		return
	}
	label := r.PostFormValue("name")
	if label == "" {
		label = id
	}
	if err != nil {
		code, msg := apiError(err)
		if code == http.StatusUnauthorized {
			h.sessions.remove(s.id)
			h.toLogin(w, r, "", true)
			return
		}
		s.addFlash("error", fmt.Sprintf("Unable to %s transfer %s: %s", action, label, msg))
	} else {
		s.addFlash("success", fmt.Sprintf(done, label))
	}
	fallback := Prefix + "/project/transfers"
	if action == "delete" {
		http.Redirect(w, r, fallback, http.StatusSeeOther)
		return
	}
	back(w, r, fallback)
}

// --- create ----------------------------------------------------------------

type createForm struct {
	Name, Description, Mode         string
	SourceRegion, VolumeID          string
	BackupID                        string
	Pool, Image, Snapshot           string
	DestRegion, DestPool, DestImage string
	Regions                         []string
	Modes                           []string
	Error                           string
}

func (h *Handler) createPage(w http.ResponseWriter, r *http.Request, s *session) {
	f := createForm{SourceRegion: s.selectedRegion(), Mode: "auto"}
	for _, reg := range s.regions {
		if reg != f.SourceRegion {
			f.DestRegion = reg
			break
		}
	}
	h.showCreate(w, r, s, http.StatusOK, f)
}

func (h *Handler) showCreate(w http.ResponseWriter, r *http.Request, s *session, code int, f createForm) {
	f.Regions, f.Modes = s.regions, []string{"auto", "full", "incremental"}
	h.render(w, r, code, "create", s, pageData{
		Title: "Create transfer", Nav: "transfers", Breadcrumbs: []string{"Project", "Volumes", "Cross-region transfers", "Create transfer"},
		Body: f,
	})
}

func (h *Handler) create(w http.ResponseWriter, r *http.Request, s *session) {
	v := func(k string) string { return strings.TrimSpace(r.PostFormValue(k)) }
	f := createForm{
		Name: v("name"), Description: v("description"), Mode: v("mode"),
		SourceRegion: v("source_region"), VolumeID: v("volume_id"), BackupID: v("backup_id"), Pool: v("pool"), Image: v("image"), Snapshot: v("snapshot"),
		DestRegion: v("destination_region"), DestPool: v("destination_pool"), DestImage: v("destination_image"),
	}
	var o CreateOpts
	o.Name, o.Description, o.Mode = f.Name, f.Description, f.Mode
	o.Source.Region, o.Source.VolumeID, o.Source.BackupID, o.Source.Pool, o.Source.Image, o.Source.Snapshot = f.SourceRegion, f.VolumeID, f.BackupID, f.Pool, f.Image, f.Snapshot
	o.Destination.Region, o.Destination.Pool, o.Destination.Image = f.DestRegion, f.DestPool, f.DestImage
	ctx, cancel := apiCtx(r)
	defer cancel()
	t, err := createTransfer(ctx, h.ferryClient(s, r), o)
	if err != nil {
		code, msg := apiError(err)
		if code == http.StatusUnauthorized {
			h.sessions.remove(s.id)
			h.toLogin(w, r, "", true)
			return
		}
		f.Error = "Unable to create transfer: " + msg
		h.showCreate(w, r, s, http.StatusOK, f)
		return
	}
	label := t.Name
	if label == "" {
		label = t.ID
	}
	s.addFlash("success", "Transfer created: "+label)
	http.Redirect(w, r, Prefix+"/project/transfers", http.StatusSeeOther)
}

// --- admin -----------------------------------------------------------------

func (h *Handler) servicesPage(w http.ResponseWriter, r *http.Request, s *session) {
	if !s.isAdmin() {
		h.errorPage(w, r, s, http.StatusForbidden, "Forbidden", "Only administrators can list Ferry's services.")
		return
	}
	ctx, cancel := apiCtx(r)
	defer cancel()
	svcs, err := listServices(ctx, h.ferryClient(s, r))
	if err != nil {
		h.apiFailed(w, r, s, err)
		return
	}
	h.render(w, r, http.StatusOK, "services", s, pageData{
		Title: "Ferry services", Nav: "services", Breadcrumbs: []string{"Admin", "System", "Ferry services"}, Body: svcs,
	})
}

// --- formatting --------------------------------------------------------------

func terminal(status string) bool {
	return state.IsTerminal(state.Status(status))
}

func badgeClass(status string) string {
	switch status {
	case "completed":
		return "ok"
	case "error":
		return "err"
	case "cancelled", "cancelling":
		return "muted"
	case "queued":
		return "info"
	}
	return "busy"
}

// unsized: bytes move but the total is not known yet (no percentage).
func unsized(t *Transfer) bool {
	return !terminal(t.Status) && t.BytesTotal <= 0 && t.BytesTransferred > 0
}

// progressText is the percentage, or the bytes moved while the total is
// unknown.
func progressText(t *Transfer) string {
	if unsized(t) {
		return humanBytes(t.BytesTransferred)
	}
	return fmt.Sprintf("%.0f%%", t.Progress)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

func humanRate(t *Transfer) string {
	if terminal(t.Status) || t.RateBytesPerSecond <= 0 {
		return "-"
	}
	return humanBytes(t.RateBytesPerSecond) + "/s"
}

func humanETA(t *Transfer) string {
	if terminal(t.Status) || t.ETASeconds == nil {
		return "-"
	}
	d := time.Duration(*t.ETASeconds) * time.Second
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh %02dm", int(d.Hours()), int(d.Minutes())%60)
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05")
}

func whenPtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return when(*t)
}

func sourceText(l Location) string {
	switch {
	case l.VolumeID != "":
		return "volume " + l.VolumeID
	case l.BackupID != "":
		return "backup " + l.BackupID
	}
	return l.Pool + "/" + l.Image
}

func destText(l Location) string {
	switch {
	case l.VolumeID != "":
		return "volume " + l.VolumeID
	case l.BackupID != "":
		return "backup " + l.BackupID
	}
	if l.Pool == "" && l.Image == "" {
		return ""
	}
	return l.Pool + "/" + l.Image
}
