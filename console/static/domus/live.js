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
    // Forms that only make sense in one state (Retry create) are shown in it only.
    document.querySelectorAll("#actions [data-when-form]").forEach((form) => {
      form.hidden = !form.dataset.whenForm.split(" ").includes(state);
    });
  }
  const actions = document.getElementById("actions");
  if (actions) applyActions(actions.dataset.state);

  // The overview shows one page of domains, filtered and sorted by the server. Events update the
  // rows shown; a domain that is not shown but now belongs in this list (new, or entered the state
  // filtered on) is counted in a notice with a reload link instead of being inserted, since where
  // it belongs (which page, which position) is the database's to say.
  const list = document.getElementById("domains");
  const notice = document.getElementById("domains-notice");
  const unseen = new Set(); // ids of domains that belong in this list and are not shown
  let listChanged = false; // the snapshot after a reconnect differs from the rows shown

  function showNotice() {
    if (!notice) return;
    const n = unseen.size;
    const text = n ? n + " new domain" + (n === 1 ? "" : "s") + " in this list" : listChanged ? "This list has changed" : "";
    notice.querySelector('[data-field="text"]').textContent = text + " —";
    notice.hidden = !text;
  }

  function belongsInList(d) {
    const f = list.dataset;
    return (!f.host || String(d.host) === f.host) && (!f.team || String(d.team) === f.team) &&
      (!f.state || d.state === f.state) && (!f.q || String(d.name).toLowerCase().includes(f.q.toLowerCase()) ||
        flatAddresses(d.addresses).some((a) => String(a.address).toLowerCase().includes(f.q.toLowerCase())));
  }

  // A domain's addresses in a cell: each with its source (and card) on hover, or a dash; a card's
  // cell on the domain page (data-mac) says the source beside each, with the prefix.
  // Events carry a domain's addresses flat ({address, source, mac}); the API's list (read again
  // after a reconnect) per card ({mac, addresses: [...]}): both come here flat.
  function flatAddresses(list) {
    return (list || []).flatMap((x) => (x.addresses ? x.addresses.map((a) => ({ ...a, mac: x.mac })) : [x]));
  }

  function showAddresses(cell, addresses) {
    const perCard = "mac" in cell.dataset;
    if (!addresses.length && !perCard) {
      const none = document.createElement("span");
      none.className = "hint";
      none.textContent = "—";
      cell.replaceChildren(none);
      return;
    }
    const parts = [];
    addresses.forEach((a, i) => {
      const code = document.createElement("code");
      code.textContent = a.address + (perCard && a.prefix ? "/" + a.prefix : "");
      code.title = a.source + (a.mac ? ", " + a.mac : "");
      if (i) parts.push(" ");
      parts.push(code);
      if (perCard) {
        const source = document.createElement("span");
        source.className = "hint";
        source.textContent = " " + a.source;
        parts.push(source);
      }
    });
    cell.replaceChildren(...parts);
  }

  function applyListed(d) {
    const row = list.querySelector('[data-domain-row="' + d.id + '"]');
    if (row) {
      const name = row.querySelector('[data-field="name"]');
      if (name && d.name) name.textContent = d.name;  // renamed
      const vcpus = row.querySelector('[data-field="vcpus"]');
      if (vcpus && d.vcpus !== undefined) vcpus.textContent = d.vcpus;
      const memory = row.querySelector('[data-field="memory_mib"]');
      if (memory && d.memory_mib !== undefined) memory.textContent = d.memory_mib + " MiB";
      const addresses = row.querySelector('[data-field="addresses"]');
      if (addresses && d.addresses) showAddresses(addresses, flatAddresses(d.addresses));
    } else if ((d.id > Number(list.dataset.newest) || list.dataset.state) && belongsInList(d)) {
      unseen.add(d.id);
      showNotice();
    } else if (unseen.delete(d.id)) {
      showNotice(); // it left the state filtered on again
    }
  }

  function forgetDomain(id) {
    document.querySelectorAll('[data-domain-row="' + id + '"]').forEach((r) => r.remove());
    if (unseen.delete(id)) showNotice();
  }

  function applyDomain(d) {
    document.querySelectorAll('[data-domain-state="' + d.id + '"]').forEach((el) => setState(el, d.state, d.state_label));
    if (list) applyListed(d);
    if (actions && actions.dataset.domain === String(d.id)) applyActions(d.state);
    // The domain page's cards: each card's addresses as they are now.
    document.querySelectorAll('[data-nic-addresses="' + d.id + '"]').forEach((cell) => {
      if (d.addresses) showAddresses(cell, flatAddresses(d.addresses).filter((a) => a.mac === cell.dataset.mac));
    });
    const failure = document.querySelector('[data-domain-failure="' + d.id + '"]');
    if (failure) {
      failure.hidden = d.state !== "failed";
      failure.querySelector('[data-field="failure"]').textContent = d.failure || "";
    }
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
      if (j.cancellable) {  // queued, or running and able to stop half-way
        const button = document.createElement("button");
        Object.assign(button, { type: "button", className: "small", textContent: "Cancel" });
        button.dataset.cancel = j.id;
        cancel.append(button);
      } else if (j.offer === "force-off") {  // e.g. the guest ignored the ACPI shutdown
        const button = document.createElement("button");
        Object.assign(button, { type: "button", className: "small warn", textContent: "Force off" });
        button.dataset.forceOff = j.domain;
        cancel.append(button);
      }
    }
  }

  document.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-force-off]");
    if (!button) return;
    button.disabled = true;
    const resp = await fetch("/api/v1/domains/" + encodeURIComponent(button.dataset.forceOff) + "/force-off/", {
      method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf() },
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) { button.disabled = false; flash(body.detail || "The request failed (" + resp.status + ").", "error"); }
    else { button.remove(); applyJob({ ...body.job, target: body.job.target_name }); }
  });

  // A queued job can be cancelled, and a running one whose kind can stop half-way (the server
  // refuses the others, and says why).
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
    // Pages with more to follow read it again too: events sent while the socket was down
    // (or before this page's socket opened) are not sent again.
    document.dispatchEvent(new CustomEvent("domus:resync"));
    const get = (url) => fetch(url, { credentials: "same-origin" }).then((r) => (r.ok ? r.json() : null));
    // Domains: the overview's page again (same filters, order, offset and size), and any other
    // domain the page shows (a detail page's) one by one; never the whole fleet.
    const others = [...new Set([...document.querySelectorAll("[data-domain-state]")]
      .filter((el) => !list || !list.contains(el)).map((el) => el.dataset.domainState))];
    const [listed, hosts, jobs, ...single] = await Promise.all([
      list ? get("/api/v1/domains/?" + list.dataset.query) : null,
      get("/api/v1/hosts/?limit=1000"), get("/api/v1/jobs/?limit=20"),
      ...others.map((id) => get("/api/v1/domains/" + encodeURIComponent(id) + "/")),
    ]);
    if (listed) {
      const ids = new Set(listed.results.map((d) => String(d.id)));
      let shown = [...list.querySelectorAll("[data-domain-row]")].map((row) => row.dataset.domainRow);
      // A row the page no longer lists may just have moved to another page, or be gone (deleted
      // before this socket was open, its event missed): ask, and drop the ones that are gone.
      const missing = shown.filter((id) => !ids.has(id));
      const gone = await Promise.all(missing.map((id) =>
        fetch("/api/v1/domains/" + encodeURIComponent(id) + "/", { credentials: "same-origin" })
          .then((r) => r.status === 404).catch(() => false)));
      missing.forEach((id, i) => { if (gone[i]) forgetDomain(Number(id)); });
      shown = shown.filter((id) => !(missing.includes(id) && gone[missing.indexOf(id)]));
      listChanged = listChanged || shown.some((id) => !ids.has(id)) || listed.results.length !== shown.length;
      listed.results.forEach((d) => { if (shown.includes(String(d.id))) applyDomain(d); });
      showNotice();
    }
    single.forEach((d) => { if (d) applyDomain(d); });
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

  // Show a console's presence notice (who watches, who has control) in its `box`; returns
  // whether this socket holds control. Control is by socket: two tabs of one user differ.
  window.domusShowPresence = function (box, take, p, viewOnly) {
    const inControl = !viewOnly && p.controller_id === p.you;
    const typist = p.controller_id === null ? "nobody has control"
      : inControl ? "you have control" : p.controller + " has control";
    box.querySelector('[data-field="who"]').textContent =
      "Watching: " + p.viewers.join(", ") + " · " + typist + (p.event ? " — " + p.event : "");
    box.hidden = false;
    take.hidden = viewOnly || inControl;
    return inControl;
  };

  // A ticket for one of a domain's consoles (kind "serial" or "vnc"): to type if this user may,
  // else to watch. Resolves to [response, body]; body.socket is the WebSocket address to open.
  window.domusConsoleTicket = async function (domainId, kind) {
    const ask = (mode) => fetch("/api/v1/domains/" + domainId + "/console-tickets/", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
      body: JSON.stringify({ kind, mode }),
    });
    let resp = await ask("interact");
    if (resp.status === 403) resp = await ask("view"); // may watch, may not type
    const body = await resp.json();
    if (resp.ok) body.socket = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + body.url;
    return [resp, body];
  };

  function flash(text, kind, stays) {
    const div = document.createElement("div");
    div.className = "flash " + kind;
    div.textContent = text;
    document.querySelector("main").prepend(div);
    if (!stays) setTimeout(() => div.remove(), 8000);
    return div;
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
      else if (ev.type === "domain.deleted") forgetDomain(ev.domain.id);
      else if (ev.type === "job.updated") applyJob(ev.job);
      else if (ev.type === "host.state") applyHost(ev.host);
      // Pages with more to follow (the host page's pools) listen for "domus:<type>".
      document.dispatchEvent(new CustomEvent("domus:" + ev.type, { detail: ev }));
    };
    ws.onclose = (e) => {
      if (e.code === 4403) { // what opened it ended (signed out, access changed): say so, stay closed
        if (indicator) { indicator.classList.remove("on"); indicator.title = "Live updates stopped"; }
        const div = flash("Live updates stopped: " + (e.reason || "access withdrawn") + ". ", "error", true);
        div.dataset.live = "stopped";
        const again = document.createElement("a");
        again.href = location.href;
        again.textContent = "Reload";
        div.append(again);
        return;
      }
      if (indicator) { indicator.classList.remove("on"); indicator.title = "Live updates: reconnecting"; }
      setTimeout(connect, retry + Math.random() * retry);
      retry = Math.min(retry * 2, 10000);
    };
  }
  connect();
})();
