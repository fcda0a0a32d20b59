// The domain page's serial console: xterm.js <-> /ws/console/ (binary frames both ways).
(function () {
  "use strict";
  const el = document.getElementById("terminal");
  const status = document.getElementById("console-status");
  if (!el) return;
  const term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000, fontSize: 14,
    theme: { background: "#10151c" } });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(el);
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  window.domusTerminal = term; // for tests and the curious
  const encoder = new TextEncoder();
  let ws = null;
  let viewOnly = false;

  function say(text, cls) { status.textContent = text; status.className = "console-status " + (cls || ""); }

  let connecting = false; // a ticket is on its way: a second connect() would open a second socket
  async function connect() {
    if (ws || connecting || el.dataset.state !== "running") {
      if (el.dataset.state !== "running") say("the domain is not running");
      return;
    }
    say("connecting…");
    connecting = true;
    let resp, body;
    try {
      [resp, body] = await window.domusConsoleTicket(el.dataset.domain, "serial");
    } finally {
      connecting = false;
    }
    if (!resp.ok) { say("cannot connect: " + (body.detail || resp.status), "bad"); return; }
    viewOnly = body.mode === "view";
    ws = new WebSocket(body.socket);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      term.reset(); // the agent replays the console's recent history: start from a clean screen
      if (viewOnly) { say("watching (read-only: you may not type here)", "ok"); return; }
      say("connected", "ok"); term.focus(); ws.send(encoder.encode("\r"));
    };
    ws.onmessage = (msg) => {
      if (typeof msg.data !== "string") { term.write(new Uint8Array(msg.data)); return; }
      const notice = JSON.parse(msg.data);
      if (notice.type === "error") say(notice.detail, "bad"); // a request that failed (a break)
      else showPresence(notice);
    };
    ws.onclose = (ev) => {
      ws = null;
      const retry = el.dataset.state === "running" && ev.code !== 4403;
      say("disconnected" + (ev.reason ? ": " + ev.reason : "") + (retry ? " — reconnecting…" : ""),
        ev.code === 1000 && !retry ? "" : "bad");
      if (retry) setTimeout(connect, 2000);
    };
  }

  // Who watches, who types: one viewer types at a time; the others take control explicitly.
  const presence = document.getElementById("console-presence");
  const take = document.getElementById("take-control");
  let inControl = false;
  function showPresence(p) {
    if (p.type !== "presence" || !presence) return;
    inControl = window.domusShowPresence(presence, take, p, viewOnly);
  }
  const clear = document.getElementById("console-clear");
  if (clear) clear.addEventListener("click", () => { term.clear(); term.focus(); });
  if (take) take.addEventListener("click", () => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send('{"type": "take-control"}');
  });
  const sendBreak = document.getElementById("console-break");
  if (sendBreak) sendBreak.addEventListener("click", () => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (!inControl) { say("take control first to send a break", "bad"); return; }
    ws.send('{"type": "break"}');
    say("break sent: type a SysRq key within 5 s (h for help)", "ok");
    term.focus();
  });
  term.onData((data) => { if (ws && ws.readyState === WebSocket.OPEN && inControl) ws.send(encoder.encode(data)); });

  // Copy and paste as in a desktop terminal: Ctrl+Shift+C and Ctrl+Shift+V (Ctrl+C and Ctrl+V go
  // to the guest, as ^C and ^V), the buttons, or the browser's own menu. Ctrl+Shift+V is the
  // browser's own paste, which xterm.js takes as it takes the menu's; the Paste button reads
  // the clipboard itself. Either way the text goes through xterm.js's paste, which honours the
  // guest's bracketed-paste mode.
  async function copySelection() {
    const text = term.getSelection();
    if (!text) { say("select text in the console first, then copy", "bad"); return; }
    try {
      await navigator.clipboard.writeText(text);
      say("copied " + text.length + " characters", "ok");
    } catch (err) {
      say("the browser refused the clipboard (" + err.name + "): use its Copy menu", "bad");
    }
    term.focus();
  }
  async function pasteClipboard() {
    if (!inControl) { say(viewOnly ? "read-only: you may not type here" : "take control first to paste", "bad"); return; }
    let text;
    try {
      text = await navigator.clipboard.readText();
    } catch (err) {
      say("the browser refused to read the clipboard (" + err.name + "): paste with its Paste menu", "bad");
      return;
    }
    if (text) term.paste(text);
    term.focus();
  }
  term.attachCustomKeyEventHandler((ev) => {
    if (ev.type !== "keydown" || !ev.ctrlKey || !ev.shiftKey || ev.altKey || ev.metaKey) return true;
    if (ev.key.toLowerCase() !== "c") return true;
    ev.preventDefault(); // Chrome's Ctrl+Shift+C opens its inspector
    copySelection();
    return false;
  });
  const copy = document.getElementById("console-copy");
  if (copy) copy.addEventListener("click", copySelection);
  const paste = document.getElementById("console-paste");
  if (paste) paste.addEventListener("click", pasteClipboard);
  document.addEventListener("domus:domain-state", (e) => {
    if (e.detail.state === "running") connect();
    else if (!ws) say(e.detail.state === "failed" ? "the domain was never created" : "the domain is " + (e.detail.state_label || e.detail.state).toLowerCase());
  });
  connect();
})();
