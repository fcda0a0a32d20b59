// Live state: one WebSocket to /ws/events/, applied to whatever the page shows.
// Each time the socket opens (the first time too: the page was rendered a moment earlier) the
// page re-fetches a snapshot, so that nothing that happened in between stays stale.
(function () {
  "use strict";
  const indicator = document.getElementById("live-status");
  let retry = 500;

  function setState(el, state, label) {
    el.className = el.className.replace(/\b(state|host|job)-\S+/g, "").trim();
    el.classList.add(el.dataset.domainState ? "state-" + state : el.dataset.hostState ? "host-" + state : "job-" + state);
    el.textContent = label || state;
  }

  // Buttons that make no sense in the current state are disabled (the server checks anyway).
  function applyActions(state) {
    document.querySelectorAll("#actions [data-when]").forEach((button) => {
      button.disabled = !button.dataset.when.split(" ").includes(state);
    });
  }
  const actions = document.getElementById("actions");
  if (actions) applyActions(actions.dataset.state);

  function applyDomain(d) {
    document.querySelectorAll('[data-domain-state="' + d.id + '"]').forEach((el) => setState(el, d.state, d.state_label));
    if (actions && actions.dataset.domain === String(d.id)) applyActions(d.state);
    const term = document.getElementById("terminal");
    if (term && String(d.id) === term.dataset.domain) {
      term.dataset.state = d.state;
      document.dispatchEvent(new CustomEvent("domus:domain-state", { detail: d }));
    }
  }

  function applyJob(j) {
    let row = document.querySelector('[data-job="' + j.id + '"]');
    const table = document.getElementById("jobs");
    if (!row && table && (!table.dataset.domain || table.dataset.domain === String(j.domain))) {
      const empty = table.querySelector("tr.empty");
      if (empty) empty.remove();
      row = document.createElement("tr");
      row.dataset.job = j.id;
      row.innerHTML = "<td></td><td></td><td></td><td>—</td>" +
        '<td><span class="badge" data-field="status"></span></td>' +
        '<td><progress max="100" data-field="progress"></progress></td><td data-field="step"></td>' +
        '<td data-field="cancel"></td>';
      row.cells[0].textContent = j.id;
      row.cells[1].textContent = j.kind;
      row.cells[2].textContent = j.target;
      row.cells[3].textContent = j.actor || "—";
      table.tBodies[0].prepend(row);
    }
    if (!row) return;
    setState(row.querySelector('[data-field="status"]'), j.status);
    row.querySelector('[data-field="progress"]').value = j.progress;
    row.querySelector('[data-field="step"]').textContent = j.error || j.step;
    const cancel = row.querySelector('[data-field="cancel"]');
    if (cancel) {
      cancel.replaceChildren();
      if (j.status === "queued") {
        const button = document.createElement("button");
        Object.assign(button, { type: "button", className: "small", textContent: "Cancel" });
        button.dataset.cancel = j.id;
        cancel.append(button);
      }
    }
  }

  // A job that has not started can be cancelled (the server refuses one that has, and says so).
  document.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-cancel]");
    if (!button) return;
    const resp = await fetch("/api/v1/jobs/" + button.dataset.cancel + "/cancel/", {
      method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf() },
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) flash(body.detail || "The request failed (" + resp.status + ").", "error");
    else applyJob({ ...body, target: body.target_name });
  });

  function applyHost(h) {
    document.querySelectorAll('[data-host-state="' + h.id + '"]').forEach((el) => {
      const label = h.state.charAt(0).toUpperCase() + h.state.slice(1).replace(/_/g, " ");
      setState(el, h.state, label);
      el.title = h.detail || "";
    });
  }

  async function resync() {
    const get = (url) => fetch(url, { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : null));
    const [domains, hosts, jobs] = await Promise.all([
      get("/api/v1/domains/?limit=1000"), get("/api/v1/hosts/?limit=1000"), get("/api/v1/jobs/?limit=20"),
    ]);
    if (domains) {
      const ids = new Set(domains.results.map((d) => String(d.id)));
      document.querySelectorAll("[data-domain-row]").forEach((row) => { if (!ids.has(row.dataset.domainRow)) row.remove(); });
      domains.results.forEach(applyDomain);
    }
    if (hosts) hosts.results.forEach(applyHost);
    if (jobs) {
      // Update the rows shown; add only jobs newer than the newest shown, oldest first.
      const shown = [...document.querySelectorAll("[data-job]")].map((r) => Number(r.dataset.job));
      const newest = Math.max(0, ...shown);
      jobs.results.reverse().forEach((j) => {
        if (j.id > newest || shown.includes(j.id)) applyJob({ ...j, target: j.target_name });
      });
    }
  }

  function csrf() {
    const m = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }
  window.domusCsrf = csrf;

  function flash(text, kind) {
    const div = document.createElement("div");
    div.className = "flash " + kind;
    div.textContent = text;
    document.querySelector("main").prepend(div);
    setTimeout(() => div.remove(), 8000);
  }

  // Power actions go through the API, so the page (and the console's scrollback) stays.
  document.querySelectorAll("form[data-api]").forEach((form) => form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const resp = await fetch(form.dataset.api, {
      method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf() },
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) flash(body.detail || "The request failed (" + resp.status + ").", "error");
    else applyJob({ ...body.job, target: body.job.target_name });
  }));

  function connect() {
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/events/");
    ws.onopen = () => {
      retry = 500;
      if (indicator) { indicator.classList.add("on"); indicator.title = "Live updates: connected"; }
      resync();
    };
    ws.onmessage = (msg) => {
      const ev = JSON.parse(msg.data);
      if (ev.type === "domain.state") applyDomain(ev.domain);
      else if (ev.type === "domain.deleted") document.querySelectorAll('[data-domain-row="' + ev.domain.id + '"]').forEach((r) => r.remove());
      else if (ev.type === "job.updated") applyJob(ev.job);
      else if (ev.type === "host.state") applyHost(ev.host);
    };
    ws.onclose = () => {
      if (indicator) { indicator.classList.remove("on"); indicator.title = "Live updates: reconnecting"; }
      setTimeout(connect, retry + Math.random() * retry);
      retry = Math.min(retry * 2, 10000);
    };
  }
  connect();
})();
