// Ferry dashboard: progress bars, live updates, confirmations. No
// external resources; served under the page's Content-Security-Policy.
(function () {
  "use strict";

  function setBar(el, pct, status) {
    var bar = el.querySelector(".bar");
    if (!bar) return;
    var p = Math.max(0, Math.min(100, Number(pct) || 0));
    bar.style.width = p + "%";
    el.setAttribute("aria-valuenow", String(p));
    el.classList.toggle("done", status === "completed");
    el.classList.toggle("failed", status === "error");
  }

  function initBars(root) {
    root.querySelectorAll(".progress[data-progress]").forEach(function (el) {
      setBar(el, el.getAttribute("data-progress"), el.getAttribute("data-status"));
    });
  }

  // update fills an element (a table row, or the detail page) from the
  // JSON of one transfer.
  function update(root, t) {
    root.querySelectorAll("[data-f]").forEach(function (el) {
      var k = el.getAttribute("data-f");
      if (!(k in t)) return;
      var v = t[k];
      if (v === "" || v === null) v = "-";
      el.textContent = v;
      if (k === "status") el.className = "badge badge-" + t.badge;
    });
    root.querySelectorAll(".progress").forEach(function (el) {
      el.classList.toggle("unsized", !!t.unsized);
      setBar(el, t.progress, t.status);
    });
    root.querySelectorAll("[data-show]").forEach(function (el) {
      el.hidden = !t[el.getAttribute("data-show")];
    });
    // A replication's (or a group's) lag turns red while its RPO is breached.
    if ("rpo_breached" in t) {
      root.querySelectorAll("[data-breached]").forEach(function (el) {
        el.classList.toggle("lag-breached", !!t.rpo_breached);
      });
    }
  }

  function poll(container) {
    var url = container.getAttribute("data-poll");
    var busy = false;
    function tick() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.status === 401) { window.location.reload(); throw new Error("session ended"); }
          return r.json();
        })
        .then(function (data) {
          var list = data.transfers || data.replications || data.replication_groups || [];
          if (container.tagName === "TABLE") {
            var rows = container.querySelectorAll("tbody tr[data-id]");
            var known = {};
            rows.forEach(function (row) { known[row.getAttribute("data-id")] = row; });
            var changed = list.length !== rows.length;
            list.forEach(function (t) {
              var row = known[t.id];
              if (row) update(row, t); else changed = true;
            });
            // A transfer appeared or went: the server renders the table.
            if (changed && !document.querySelector("dialog[open]")) window.location.reload();
          } else if (list.length === 1) {
            update(document, list[0]);
          }
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }
    window.setInterval(tick, 2000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    initBars(document);
    document.querySelectorAll("[data-poll]").forEach(poll);
    document.addEventListener("submit", function (ev) {
      var btn = ev.submitter || ev.target.querySelector("[data-confirm]");
      var msg = btn && btn.getAttribute("data-confirm");
      if (msg && !window.confirm(msg + "\n\nPlease confirm your selection.")) ev.preventDefault();
    });
    document.querySelectorAll("select[data-autosubmit]").forEach(function (sel) {
      sel.addEventListener("change", function () { sel.form.submit(); });
    });
    document.querySelectorAll("[data-dismiss]").forEach(function (b) {
      b.addEventListener("click", function () { b.parentNode.remove(); });
    });
  });
})();
