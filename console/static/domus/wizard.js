// The creation wizard: eight steps, each checked by the server before the next one opens.
// The page only offers what the chosen host can do (modes, pools, ISOs, networks, bridges);
// the server validates everything again, with the same code as the API.
(function () {
  "use strict";
  const form = document.getElementById("wizard");
  if (!form) return;
  const data = JSON.parse(document.getElementById("wizard-data").textContent);
  const el = (name) => form.elements.namedItem(name);
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const LAST = 8;
  let step = 1;

  function make(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (v === true) node.setAttribute(k, "");
      else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const child of children || []) node.append(child);
    return node;
  }
  function options(select, items, keep) {
    const previous = keep ? select.value : null;
    select.replaceChildren(...items.map(([value, label, disabled]) => make("option", { value, text: label, disabled: !!disabled })));
    if (previous !== null && items.some(([v]) => v === previous)) select.value = previous;
  }

  // -- the chosen host and OS ------------------------------------------------------------------
  function host() {
    const id = el("host").value;
    if (id === "auto") {
      return { auto: true, name: "placed automatically", modes: [{ mode: "hvm", available: true, note: "" }],
        pools: [{ name: "default", type: "dir", active: true, available_bytes: null, volumes: [] }],
        networks: [{ name: "default", active: true, forward: "nat" }], bridges: [], max_vcpus: null };
    }
    return data.hosts.find((h) => String(h.id) === id) || data.hosts[0];
  }
  function variant() { return data.os.find((v) => v.id === el("os").value) || data.os[0]; }
  const xen = () => host().hypervisor === "xen";

  // -- step 2: modes ---------------------------------------------------------------------------
  const MODE_TEXT = {
    hvm: ["Full virtualisation (HVM)", "an unmodified OS, as on real hardware"],
    pv: ["Paravirtualisation (PV)", "Xen only: a Xen-aware kernel, no firmware"],
    pvh: ["PVH", "Xen only: a PV kernel in a lightweight HVM container"],
  };
  function renderModes() {
    const h = host();
    const box = $("#modes");
    const current = form.querySelector("input[name=mode]:checked");
    const wanted = current ? current.value : "hvm";
    const modes = ["hvm", "pv", "pvh"].map((mode) => h.modes.find((m) => m.mode === mode) ||
      { mode, available: mode === "hvm" && !h.modes.length, note: "not offered by this hypervisor" });
    box.replaceChildren(...modes.map((m) => {
      let note = m.note || "";
      if (m.available && m.accel === "software") note = note || "software emulation: works, but slowly";
      if (m.available && m.accel === "hardware") note = "hardware-assisted (VT-x/AMD-V)";
      return make("label", { class: "choice" + (m.available ? "" : " unavailable"), "data-mode": m.mode }, [
        make("input", { type: "radio", name: "mode", value: m.mode, disabled: !m.available, checked: m.available && m.mode === wanted }),
        make("span", {}, [make("b", { text: MODE_TEXT[m.mode][0] }), make("small", { text: MODE_TEXT[m.mode][1] + (note ? " — " + note : "") })]),
      ]);
    }));
    if (!form.querySelector("input[name=mode]:checked")) {
      const first = form.querySelector("input[name=mode]:not([disabled])");
      if (first) first.checked = true;
    }
  }
  const mode = () => (form.querySelector("input[name=mode]:checked") || { value: "hvm" }).value;

  // -- step 3: install source ------------------------------------------------------------------
  const KINDS = { hvm: ["iso", "cdrom", "url", "pxe", "kernel", "disk"], pv: ["url", "kernel", "bootloader"], pvh: ["url", "kernel"] };
  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
  function binary(n) {
    let i = 0;
    while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i += 1; }
    return i ? `${n.toFixed(1)}\u00a0${UNITS[i]}` : `${n}\u00a0B`;
  }
  function volumes(kind) {
    return host().pools.flatMap((p) => (p.volumes || []).filter((v) => v.kind === kind).map((v) => {
      const facts = [p.name];
      if (v.capacity_bytes) facts.push(binary(v.capacity_bytes));
      if (v.sha256) facts.push(`SHA-256 ${v.sha256.slice(0, 12)}…`);
      return [v.path, `${v.name} (${facts.join(", ")})`];
    }));
  }
  function isoAbout() {
    const path = el("iso_pick").value;
    const found = host().pools.flatMap((p) => p.volumes || []).find((v) => v.path === path);
    $("[data-iso-about]").textContent = found ? `${found.path}${found.capacity_bytes ? " · " + binary(found.capacity_bytes) : ""}${found.sha256 ? " · SHA-256 " + found.sha256 : " · checksum not known (not uploaded through Domus)"}` : "";
  }
  // "Upload an ISO" right in the step: into one of the chosen host's directory pools, for the
  // team the domain is for; the ISO is offered (and chosen) as soon as it is in.
  function renderUpload() {
    const h = host();
    const box = $("[data-wizard-upload]");
    const pools = (h.pools || []).filter((p) => p.active && (h.upload_pools || []).includes(p.type));
    box.hidden = h.auto || !h.may_upload || !pools.length;
    if (box.hidden) return;
    box.querySelector("[data-upload-host]").value = h.id;
    box.querySelector("[data-upload-team]").value = el("team") ? el("team").value : "";
    options(box.querySelector("[data-upload-pool]"), pools.map((p) => [p.name, `${p.name} (${p.available_bytes ? binary(p.available_bytes) + " free" : p.type})`]), true);
  }
  $("[data-wizard-upload]").addEventListener("domus:uploaded", (e) => {
    const done = e.detail;
    const h = data.hosts.find((x) => String(x.id) === String(done.host));
    const pool = h && h.pools.find((p) => p.name === done.pool);
    if (!pool) return;
    pool.volumes = (pool.volumes || []).filter((v) => v.path !== done.path);
    pool.volumes.push({ name: done.name, path: done.path, kind: "iso", capacity_bytes: done.length, sha256: done.sha256 });
    renderBoot();
    el("iso_pick").value = done.path;
    isoAbout();
  });
  function renderBoot() {
    const allowed = KINDS[mode()];
    for (const input of $$("input[name=boot_kind]")) {
      const ok = allowed.includes(input.value);
      input.disabled = !ok;
      input.closest("label").classList.toggle("unavailable", !ok);
      input.closest("label").title = ok ? "" : `not possible for a ${mode().toUpperCase()} guest`;
    }
    if (!form.querySelector("input[name=boot_kind]:checked:not([disabled])")) {
      form.querySelector(`input[name=boot_kind][value=${allowed[0]}]`).checked = true;
    }
    const kind = bootKind();
    for (const part of $$("[data-boot]")) part.hidden = part.dataset.boot !== kind;
    $(".install-note").hidden = !["iso", "cdrom", "url", "pxe"].includes(kind);
    const isos = volumes("iso");
    options(el("iso_pick"), [["", isos.length ? "— choose an ISO —" : "— no ISO in this host's pools —"], ...isos], true);
    isoAbout();
    renderUpload();
  }
  const bootKind = () => (form.querySelector("input[name=boot_kind]:checked") || { value: "iso" }).value;
  function bootSpec() {
    const kind = bootKind();
    const v = (name) => el(name).value.trim();
    if (kind === "iso") return { kind, iso: v("iso_pick") || v("iso") };
    if (kind === "cdrom") return { kind, device: v("cdrom_device") };
    if (kind === "url") return { kind, url: v("url"), kernel: v("url_kernel"), initrd: v("url_initrd"), cmdline: v("url_cmdline") };
    if (kind === "kernel") {
      const boot = { kind, kernel: v("kernel"), cmdline: v("cmdline") };
      if (v("initrd")) boot.initrd = v("initrd");
      return boot;
    }
    return { kind };
  }

  // -- step 4: OS ------------------------------------------------------------------------------
  function renderOs(keep) {
    const family = el("os_family").value;
    const pv = mode() !== "hvm";
    options(el("os"), data.os.filter((v) => v.family === family).map((v) => [v.id, v.label, pv && !v.pv_capable]), keep);
    showOsDefaults();
  }
  function showOsDefaults() {
    const v = variant();
    $("#os-defaults").textContent = `Defaults for ${v.label}: ${v.memory_mib} MiB (at least ${v.min_memory_mib} MiB), ${v.vcpus} vCPU, ${v.disk_gib} GiB disk on ${v.disk_bus}, ` +
      `${v.nic_model} network card, clock ${v.clock === "utc" ? "UTC" : "local time"}.` + (v.note ? " " + v.note : "");
  }
  function applyOsDefaults() {
    const v = variant();
    el("memory").value = v.memory_mib >= 1024 && v.memory_mib % 1024 === 0 ? v.memory_mib / 1024 : v.memory_mib;
    el("memory_unit").value = v.memory_mib >= 1024 && v.memory_mib % 1024 === 0 ? "GiB" : "MiB";
    el("vcpus").value = v.vcpus;
    el("clock").value = v.clock;
    for (const row of $$(".disk-row")) { $("[name=d_bus]", row).value = ""; }
    for (const row of $$(".nic-row")) { $("[name=n_model]", row).value = ""; }
    const first = $(".disk-row [name=d_size]");
    if (first && !first.dataset.touched) first.value = v.disk_gib;
  }

  // -- step 5: disks ---------------------------------------------------------------------------
  const BUSES = [["", "OS default"], ["virtio", "virtio"], ["sata", "SATA"], ["scsi", "SCSI"], ["ide", "IDE"], ["xen", "Xen PV"]];
  function poolOptions() {
    return host().pools.map((p) => [p.name, p.name + (p.available_bytes != null ? ` (${(p.available_bytes / 2 ** 30).toFixed(1)} GiB free, ${p.type})` : ""), !p.active]);
  }
  function addDisk(size) {
    const index = $$(".disk-row").length;
    const images = volumes("image");
    const row = make("fieldset", { class: "disk-row" }, [
      make("legend", { text: `Disk ${index + 1}` }),
      make("div", { class: "choices compact" }, [
        make("label", { class: "inline" }, [make("input", { type: "radio", name: `d_source_${index}`, value: "new", checked: true }), " New volume"]),
        make("label", { class: "inline" }, [make("input", { type: "radio", name: `d_source_${index}`, value: "backing" }), " New disk on a base (cloud) image"]),
        make("label", { class: "inline" }, [make("input", { type: "radio", name: `d_source_${index}`, value: "existing" }), " Use an existing image"]),
      ]),
      make("div", { class: "row" }, [
        make("label", {}, ["Size", make("input", { name: "d_size", type: "number", min: "0.1", step: "0.1", value: size })]),
        make("label", {}, ["Unit", make("select", { name: "d_unit" }, [make("option", { text: "GiB" }), make("option", { text: "MiB" })])]),
        make("label", {}, ["Pool", make("select", { name: "d_pool" })]),
        make("label", {}, ["Format", make("select", { name: "d_format" }, [make("option", { value: "qcow2", text: "qcow2" }), make("option", { value: "raw", text: "raw" })])]),
        make("label", {}, ["Bus", make("select", { name: "d_bus" })]),
      ]),
      make("div", { class: "choices compact", "data-part": "allocation" }, [
        make("label", { class: "inline" }, [make("input", { type: "radio", name: `d_alloc_${index}`, value: "sparse", checked: true }), " Grow as the guest writes (sparse)"]),
        make("label", { class: "inline" }, [make("input", { type: "radio", name: `d_alloc_${index}`, value: "preallocated" }), " Allocate all the space now"]),
      ]),
      make("label", { "data-part": "image", hidden: true }, ["Image", make("select", { name: "d_image" })]),
      make("small", { class: "field-error", "data-error-for": `disks.${index}` }),
      make("small", { class: "field-error", "data-error-for": `disks.${index}.size_gib` }),
      make("small", { class: "field-error", "data-error-for": `disks.${index}.pool` }),
      make("small", { class: "field-error", "data-error-for": `disks.${index}.format` }),
      make("small", { class: "field-error", "data-error-for": `disks.${index}.existing` }),
      make("small", { class: "field-error", "data-error-for": `disks.${index}.backing` }),
      make("button", { type: "button", class: "small danger", "data-remove": "" , text: "Remove" }),
    ]);
    options($("[name=d_pool]", row), poolOptions());
    options($("[name=d_bus]", row), BUSES);
    options($("[name=d_image]", row), images.length ? images : [["", "— no image in this host's pools —"]]);
    $("[name=d_size]", row).addEventListener("input", (e) => { e.target.dataset.touched = "1"; });
    row.addEventListener("change", () => syncDisk(row));
    $("[data-remove]", row).addEventListener("click", () => { row.remove(); renumber("disk-row", "Disk"); });
    $("#disks").append(row);
    syncDisk(row);
    $("#no-disk").hidden = true;
  }
  function syncDisk(row) {
    const source = $("input[type=radio][value=new]", row).checked ? "new" : $("input[type=radio][value=backing]", row).checked ? "backing" : "existing";
    $("[data-part=image]", row).hidden = source === "new";
    $("[data-part=allocation]", row).hidden = source !== "new";
    $("[name=d_size]", row).closest(".row").hidden = source === "existing";
    if (source === "backing") $("[name=d_format]", row).value = "qcow2";
  }
  function renumber(cls, label) {
    $$("." + cls).forEach((row, i) => { $("legend", row).textContent = `${label} ${i + 1}`; });
    $("#no-disk").hidden = $$(".disk-row").length > 0;
    $("#no-nic").hidden = $$(".nic-row").length > 0;
  }
  function disksSpec() {
    return $$(".disk-row").map((row) => {
      const source = $("input[type=radio][value=new]", row).checked ? "new" : $("input[type=radio][value=backing]", row).checked ? "backing" : "existing";
      const bus = $("[name=d_bus]", row).value;
      if (source === "existing") {
        const disk = { existing: $("[name=d_image]", row).value, format: $("[name=d_format]", row).value };
        if (bus) disk.bus = bus;
        return disk;
      }
      const disk = {
        size_gib: `${$("[name=d_size]", row).value} ${$("[name=d_unit]", row).value}`,
        pool: $("[name=d_pool]", row).value,
        format: $("[name=d_format]", row).value,
      };
      if (source === "backing") disk.backing = $("[name=d_image]", row).value;
      else disk.allocation = $("input[type=radio][value=preallocated]", row).checked ? "preallocated" : "sparse";
      if (bus) disk.bus = bus;
      return disk;
    });
  }

  // -- step 6: network cards -------------------------------------------------------------------
  const MODELS = [["", "OS default"], ["virtio", "virtio"], ["e1000e", "Intel e1000e"], ["e1000", "Intel e1000"], ["rtl8139", "Realtek rtl8139"], ["netfront", "Xen netfront"]];
  function addNic() {
    const index = $$(".nic-row").length;
    const h = host();
    const row = make("fieldset", { class: "nic-row" }, [
      make("legend", { text: `Network card ${index + 1}` }),
      make("div", { class: "row" }, [
        make("label", {}, ["Connect to", make("select", { name: "n_source" })]),
        make("label", {}, ["Model", make("select", { name: "n_model" })]),
        make("label", {}, ["MAC", make("input", { name: "n_mac", placeholder: "generated", size: "17" })]),
      ]),
      make("p", { class: "hint nic-inactive", hidden: true }, [
        make("span", { "data-inactive-text": "" }),
        " ",
        make("button", { type: "button", class: "small", "data-start-network": "", text: "Start it" }),
      ]),
      make("small", { class: "field-error", "data-error-for": `nics.${index}.name` }),
      make("small", { class: "field-error", "data-error-for": `nics.${index}.mac` }),
      make("small", { class: "field-error", "data-error-for": `nics.${index}.model` }),
      make("button", { type: "button", class: "small danger", "data-remove": "", text: "Remove" }),
    ]);
    nicSources(row, h);
    // The first active network is the default; an inactive one stays offered, with "Start it".
    const firstActive = usableNetworks(h).find((n) => n.active);
    if (firstActive) $("[name=n_source]", row).value = `network:${firstActive.name}`;
    $("[name=n_source]", row).addEventListener("change", () => nicInactive(row));
    $("[data-start-network]", row).addEventListener("click", () => startNetwork(row));
    nicInactive(row);
    options($("[name=n_model]", row), MODELS);
    $("[data-remove]", row).addEventListener("click", () => { row.remove(); renumber("nic-row", "Network card"); });
    $("#nics").append(row);
    $("#no-nic").hidden = true;
  }
  // The networks the chosen team may use: those kept for no team or for it (a host's managers,
  // any); the server checks the same at Create.
  function usableNetworks(h) {
    const team = Number((form.elements.team && form.elements.team.value) || 0);
    return h.networks.filter((n) => h.may_manage_networks || !(n.teams || []).length || n.teams.includes(team));
  }
  function nicSources(row, h) {
    const sources = [
      ...usableNetworks(h).map((n) => [`network:${n.name}`, `Virtual network ${n.name} (${n.forward || "isolated"}${n.active ? "" : ", inactive"})`]),
      ...h.bridges.map((b) => [`bridge:${b}`, `Bridge ${b} (to the physical network)`]),
    ];
    options($("[name=n_source]", row), sources.length ? sources : [["", "— this host has no network or bridge —"]], true);
  }
  function chosenNetwork(row) {
    const [source, name] = ($("[name=n_source]", row).value || "").split(/:(.*)/s);
    return source === "network" ? host().networks.find((n) => n.name === name) : null;
  }
  // An inactive network is said so beside the card, with "Start it" for those who may (a job).
  function nicInactive(row) {
    const network = chosenNetwork(row);
    const note = $(".nic-inactive", row);
    note.hidden = !network || network.active;
    if (note.hidden) return;
    const h = host();
    $("[data-inactive-text]", row).textContent = h.may_manage_networks
      ? `The network ${network.name} is not running on ${h.name}: a domain on it cannot start until it is.`
      : `The network ${network.name} is not running on ${h.name}; ask someone who manages ${h.name} to start it, or choose another.`;
    $("[data-start-network]", row).hidden = !h.may_manage_networks;
  }
  async function startNetwork(row) {
    const network = chosenNetwork(row);
    const h = host();
    if (!network) return;
    const button = $("[data-start-network]", row);
    const said = $("[data-inactive-text]", row);
    button.disabled = true;
    said.textContent = `Starting ${network.name} on ${h.name}…`;
    try {
      const [status, answer] = await post(`/api/v1/hosts/${h.id}/networks/${encodeURIComponent(network.name)}/start/`, {});
      if (status !== 202) throw new Error(answer.detail || `HTTP ${status}`);
      let job = { status: "queued" };
      for (let i = 0; i < 120 && !["succeeded", "failed", "cancelled"].includes(job.status); i++) {
        await new Promise((done) => setTimeout(done, 500));
        const resp = await fetch(`/api/v1/jobs/${answer.job}/`, { credentials: "same-origin" });
        if (resp.ok) job = await resp.json();
      }
      if (job.status !== "succeeded") throw new Error(job.error || `the job ${job.status}`);
      for (const n of h.networks) { if (n.name === network.name) n.active = true; }
      for (const other of $$(".nic-row")) { nicSources(other, h); nicInactive(other); }
      showErrors({});
    } catch (err) {
      said.textContent = `${network.name} did not start: ${err.message || err}`;
    } finally { button.disabled = false; }
  }
  function nicsSpec() {
    return $$(".nic-row").map((row) => {
      const [source, name] = ($("[name=n_source]", row).value || "network:default").split(/:(.*)/s);
      const nic = { source, name };
      const model = $("[name=n_model]", row).value;
      const mac = $("[name=n_mac]", row).value.trim();
      if (model) nic.model = model;
      if (mac) nic.mac = mac;
      return nic;
    });
  }

  // -- step 7 hints ----------------------------------------------------------------------------
  function renderLimits() {
    const h = host();
    $("#memory-hint").textContent = h.memory_mib ? `${h.name}: ${h.free_memory_mib} MiB free of ${h.memory_mib} MiB.` : "";
    $("#vcpus-hint").textContent = h.max_vcpus ? `At most ${h.max_vcpus} on ${h.name}.` : "";
    if (h.max_vcpus) el("vcpus").max = h.max_vcpus;
    el("graphics").disabled = !!(h.graphics && h.graphics.length && !h.graphics.includes("vnc"));
  }

  // -- the whole request, as the API takes it --------------------------------------------------
  function request() {
    const body = {
      name: el("name").value.trim(),
      host: el("host").value === "auto" ? "auto" : Number(el("host").value),
      mode: mode(),
      os: el("os").value,
      boot: bootSpec(),
      disks: disksSpec(),
      nics: nicsSpec(),
      memory_mib: `${el("memory").value} ${el("memory_unit").value}`,
      vcpus: Number(el("vcpus").value),
      clock: el("clock").value,
      graphics: el("graphics").checked && !el("graphics").disabled,
      serial: el("serial").checked,
      autostart: el("autostart").checked,
      start: el("start").checked,
    };
    if (el("team") && el("team").value) body.team = Number(el("team").value);
    return body;
  }

  // -- errors, checks and navigation -----------------------------------------------------------
  function showErrors(errors) {
    for (const slot of $$(".field-error")) slot.textContent = "";
    const loose = [];
    for (const [field, messages] of Object.entries(errors || {})) {
      const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
      if (slot) slot.textContent = messages.join("; ");
      else loose.push(`${field}: ${messages.join("; ")}`);
    }
    const box = $("#wizard-errors");
    box.hidden = !loose.length;
    box.replaceChildren(...loose.map((line) => make("div", { text: line })));
  }
  function stepOf(field) {
    const head = field.split(".")[0];
    return data.steps[head] || LAST;
  }
  function csrf() { return form.querySelector("input[name=csrfmiddlewaretoken]").value; }
  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
      body: JSON.stringify(body),
    });
    return [response.status, await response.json()];
  }
  async function check(upto) {
    $("#checking").hidden = false;
    try {
      const [, answer] = await post(form.dataset.checkUrl, { ...request(), step: upto });
      showErrors(answer.errors);
      return answer;
    } catch (err) {
      showErrors({ non_field_errors: [`The check failed: ${err}`] });
      return { ok: false, errors: {} };
    } finally { $("#checking").hidden = true; }
  }
  function show(n) {
    step = n;
    for (const section of $$("section[data-step]", form)) section.hidden = Number(section.dataset.step) !== n;
    for (const item of $$("#stepper li")) {
      const s = Number(item.dataset.step);
      item.classList.toggle("current", s === n);
      item.classList.toggle("done", s < n);
    }
    $("#back").hidden = n === 1;
    $("#next").hidden = n === LAST;
    $("#create").hidden = n !== LAST;
    if (n === 2) renderModes();
    if (n === 3) renderBoot();
    if (n === 4) renderOs(true);
    if (n === 7) renderLimits();
  }
  function summarise(answer) {
    const spec = answer.spec;
    const v = data.os.find((o) => o.id === spec.os);
    const boot = spec.boot;
    const bootText = { iso: `ISO ${boot.iso}`, cdrom: `CD/DVD ${boot.device}`, url: `network install from ${boot.url}`, pxe: "PXE",
      kernel: `kernel ${boot.kernel}`, disk: "its first disk", bootloader: "pygrub" }[boot.kind];
    const disks = spec.disks.map((d) => d.existing ? `existing ${d.existing} (${d.bus})` :
      `${d.size_gib < 1 ? Math.round(d.size_gib * 1024) + " MiB" : d.size_gib + " GiB"} ${d.format} in ${d.pool}, ${d.allocation === "sparse" ? "grows as written" : "allocated now"}${d.backing ? ` on ${d.backing}` : ""} (${d.bus})`);
    const nics = spec.nics.map((n) => `${n.source} ${n.name}, ${n.model || "netfront"}, ${n.mac}`);
    const rows = [
      ["Name", spec.name], ["Host", answer.host.name + (el("host").value === "auto" ? " (placed automatically)" : "")],
      ["Mode", spec.mode.toUpperCase()], ["Install from", bootText], ["OS", v ? v.label : spec.os],
      ["Disks", disks.join("; ") || "none"], ["Network", nics.join("; ") || "none"],
      ["Memory", `${spec.memory_mib} MiB`], ["vCPUs", String(spec.vcpus)], ["Clock", spec.clock],
      ["Consoles", [spec.serial ? "serial" : null, spec.graphics ? "VNC" : null].filter(Boolean).join(", ") || "none"],
      ["Autostart", spec.autostart ? "yes" : "no"],
    ];
    $("#summary").replaceChildren(...rows.flatMap(([k, val]) => [make("dt", { text: k }), make("dd", { text: val })]));
    $("#xml").textContent = answer.xml;
  }
  async function next() {
    const answer = await check(step);
    if (!answer.ok) {
      const first = Math.min(...Object.keys(answer.errors).map(stepOf));
      if (first < step) show(first);
      return;
    }
    if (step + 1 === LAST) {
      const review = await check(LAST);
      if (!review.ok) { show(Math.min(LAST, ...Object.keys(review.errors).map(stepOf))); return; }
      summarise(review);
    }
    show(step + 1);
  }
  async function create() {
    $("#create").disabled = true;
    try {
      const [status, answer] = await post(form.dataset.createUrl, request());
      if (status === 202 && answer.redirect) { window.location.assign(answer.redirect); return; }
      showErrors(answer.errors);
      const steps = Object.keys(answer.errors || {}).map(stepOf);
      if (steps.length) show(Math.min(...steps));
    } catch (err) {
      showErrors({ non_field_errors: [`Creating failed: ${err}`] });
    } finally { $("#create").disabled = false; }
  }

  $("#next").addEventListener("click", next);
  $("#back").addEventListener("click", () => show(step - 1));
  $("#create").addEventListener("click", create);
  $("#add-disk").addEventListener("click", () => addDisk(1));
  $("#add-nic").addEventListener("click", addNic);
  form.addEventListener("submit", (e) => { e.preventDefault(); if (step < LAST) next(); });
  el("host").addEventListener("change", () => {
    // Pools, networks and modes differ per host: rebuild what depends on them.
    $("#disks").replaceChildren(); $("#nics").replaceChildren();
    addDisk(variant().disk_gib);
    if (host().networks.length || host().bridges.length) addNic();
    renderModes();
  });
  el("os_family").addEventListener("change", () => { renderOs(false); applyOsDefaults(); });
  el("os").addEventListener("change", () => { showOsDefaults(); applyOsDefaults(); });
  form.addEventListener("change", (e) => {
    if (e.target.name === "boot_kind") renderBoot();
    if (e.target.name === "iso_pick") isoAbout();
    if (e.target.name === "team") {
      renderUpload();
      for (const row of $$(".nic-row")) { nicSources(row, host()); nicInactive(row); }
    }
    if (e.target.name === "mode") renderBoot();
  });

  // Start: the first host that is usable, sensible defaults from the OS, one disk and one NIC.
  const usable = $$("option", el("host")).find((o) => o.value !== "auto" && !o.disabled);
  if (usable) el("host").value = usable.value;
  el("os_family").value = "linux";
  renderOs(false);
  const debian = data.os.find((o) => o.id.startsWith("debian")) || data.os[0];
  if (debian) { el("os_family").value = debian.family; renderOs(false); el("os").value = debian.id; }
  applyOsDefaults();
  addDisk(variant().disk_gib);
  if (host().networks.length || host().bridges.length) addNic();
  renderModes();
  show(1);
})();
