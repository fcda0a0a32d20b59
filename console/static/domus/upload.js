// Uploading an ISO or image into a host's pool with tus (tus-js-client): the bytes go through
// the console to the host's agent as they are read, in pieces of `data-chunk` bytes; a dropped
// connection or a restarted console is retried and the upload goes on from what the host holds
// (HEAD), and a page reloaded mid-way offers to resume the same file (the upload's address is
// kept in this browser's localStorage). Progress shows the rate and the time left.
//
// Markup: a <form data-upload data-host="ID" data-pool="NAME"> (or inside another form, an
// element with data-upload and a [data-upload-start] button; host and pool may come from
// [data-upload-host] and [data-upload-pool] fields in it instead) holding <input type=file data-upload-file>, optional <input data-upload-name>,
// <select data-upload-team>, <input type=checkbox data-upload-library>, and a
// [data-upload-status] element with a <progress>, [data-upload-text], and buttons
// [data-upload-pause] and [data-upload-cancel]. When done the form dispatches
// "domus:uploaded" with the upload (its path, size and SHA-256) as detail.
(() => {
  const ENDPOINT = "/api/v1/uploads/";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const size = (n) => {
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i ? `${n.toFixed(1)}\u00a0${units[i]}` : `${n}\u00a0B`;
  };
  const duration = (s) => {
    if (!isFinite(s)) return "…";
    if (s < 60) return `${Math.ceil(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.ceil(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  };
  const problem = (err) => {
    const resp = err && err.originalResponse;
    if (resp) {
      try { return JSON.parse(resp.getBody()).detail || `HTTP ${resp.getStatus()}`; } catch (_) { return `HTTP ${resp.getStatus()}`; }
    }
    return "the connection to the console failed";
  };

  function attach(form) {
    const q = (sel) => form.querySelector(sel);
    const fileInput = q("[data-upload-file]");
    const status = q("[data-upload-status]");
    const bar = status.querySelector("progress");
    const text = status.querySelector("[data-upload-text]");
    const pauseButton = q("[data-upload-pause]");
    const cancelButton = q("[data-upload-cancel]");
    const submit = q("[data-upload-start]") || q("button[type=submit], button:not([type])");
    const csrfInput = q("input[name=csrfmiddlewaretoken]") || document.querySelector("input[name=csrfmiddlewaretoken]");
    const csrf = csrfInput ? csrfInput.value : "";
    let upload = null;
    let samples = [];

    const say = (message, kind) => {
      text.textContent = message;
      status.dataset.state = kind || "";
    };
    const target = () => ({
      host: form.dataset.host || (q("[data-upload-host]") || {}).value,
      pool: form.dataset.pool || (q("[data-upload-pool]") || {}).value,
    });
    const progress = (sent, total) => {
      const now = performance.now();
      samples.push([now, sent]);
      while (samples.length > 2 && now - samples[0][0] > 5000) samples.shift(); // the last 5 s
      const [t0, b0] = samples[0];
      const rate = now > t0 ? ((sent - b0) * 1000) / (now - t0) : 0;
      bar.max = total;
      bar.value = sent;
      const left = rate > 0 ? duration((total - sent) / rate) : "…";
      say(`${size(sent)} of ${size(total)} (${Math.floor((100 * sent) / total)} %) · ${rate > 0 ? size(rate) + "/s" : "…"} · ${left} left`, "running");
    };

    const begin = async (e) => {
      e.preventDefault();
      const file = fileInput.files[0];
      if (!file) return;
      const where = target();
      const nameInput = q("[data-upload-name]");
      const name = (nameInput && nameInput.value.trim()) || file.name;
      const metadata = { host: String(where.host), pool: where.pool, name, filename: file.name };
      const team = q("[data-upload-team]");
      if (team && team.value) metadata.team = team.value;
      const library = q("[data-upload-library]");
      if (library && library.checked) metadata.library = "1";
      samples = [];
      upload = new tus.Upload(file, {
        endpoint: ENDPOINT,
        chunkSize: Number(form.dataset.chunk || 256 * 1024 * 1024),
        retryDelays: [0, 1000, 2000, 3000, 5000, 10000, 10000, 20000, 30000],
        metadata,
        headers: { "X-CSRFToken": csrf },
        // One upload per file, host, pool and name: a reloaded page resumes it.
        fingerprint: async (f) => ["domus", where.host, where.pool, name, f.name, f.size, f.lastModified].join("/"),
        removeFingerprintOnSuccess: true,
        onShouldRetry: (err) => {
          const code = err.originalResponse ? err.originalResponse.getStatus() : 0;
          return code === 0 || code === 409 || code === 423 || (code >= 500 && code !== 507 && code !== 501);
        },
        onProgress: progress,
        onError: (err) => {
          say(`Upload stopped: ${problem(err)}. Choose the same file again to go on from where it stopped.`, "error");
          submit.disabled = false;
          pauseButton.hidden = true;
        },
        onSuccess: async () => {
          pauseButton.hidden = true;
          cancelButton.hidden = true;
          submit.disabled = false;
          const resp = await fetch(upload.url, { credentials: "same-origin", headers: { Accept: "application/json" } });
          const done = resp.ok ? await resp.json() : null;
          say(done ? `Uploaded ${done.name} (${size(done.length)}), SHA-256 ${done.sha256}` : "Uploaded.", "done");
          if (done) form.dispatchEvent(new CustomEvent("domus:uploaded", { bubbles: true, detail: done }));
        },
      });
      status.hidden = false;
      submit.disabled = true;
      pauseButton.hidden = false;
      pauseButton.textContent = "Pause";
      cancelButton.hidden = false;
      const previous = await upload.findPreviousUploads();
      if (previous.length) {
        upload.resumeFromPreviousUpload(previous[0]);
        say("Resuming where it stopped…", "running");
      } else {
        say("Starting…", "running");
      }
      upload.start();
    };
    if (form.tagName === "FORM") form.addEventListener("submit", begin);
    else submit.addEventListener("click", begin);

    pauseButton.addEventListener("click", () => {
      if (!upload) return;
      if (pauseButton.textContent === "Pause") {
        upload.abort();
        pauseButton.textContent = "Resume";
        say(`Paused at ${size(bar.value)}.`, "paused");
      } else {
        samples = [];
        upload.start();
        pauseButton.textContent = "Pause";
      }
    });
    cancelButton.addEventListener("click", async () => {
      if (!upload) return;
      await upload.abort(true); // terminate: the host removes what it holds
      upload = null;
      submit.disabled = false;
      pauseButton.hidden = true;
      cancelButton.hidden = true;
      bar.value = 0;
      say("Cancelled; nothing was kept.", "");
    });
  }

  document.querySelectorAll("[data-upload]").forEach(attach);
})();
