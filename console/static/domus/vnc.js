// The domain page's graphical console: noVNC <-> /ws/console/ (RFB in binary frames; presence
// notices in text frames, which noVNC never sees). Connected while its tab is shown.
(function () {
  "use strict";
  const screen = document.getElementById("vnc-screen");
  const panel = document.getElementById("graphical-console");
  if (!screen || !panel) return;
  const status = document.getElementById("vnc-status");
  const presence = document.getElementById("vnc-presence");
  const take = document.getElementById("vnc-take-control");
  let RFB = null; // noVNC's class, loaded (an ES module) when first needed
  let rfb = null;
  let channel = null;
  let viewOnly = false;
  let inControl = false;
  let wanted = false; // the tab is shown: stay connected (reconnect after a reboot or a blip)
  let retry = null;

  function say(text, cls) { status.textContent = text; status.className = "console-status " + (cls || ""); }

  // What noVNC takes for its WebSocket: the real one, minus the text frames (presence notices).
  class RfbChannel {
    constructor(ws, onNotice) {
      this.ws = ws;
      this.onopen = null; this.onmessage = null; this.onclose = null; this.onerror = null;
      this.closeReason = ""; this.closeCode = 0;
      ws.binaryType = "arraybuffer";
      ws.onopen = (e) => this.onopen && this.onopen(e);
      ws.onerror = (e) => this.onerror && this.onerror(e);
      ws.onclose = (e) => { this.closeReason = e.reason; this.closeCode = e.code; if (this.onclose) this.onclose(e); };
      ws.onmessage = (e) => {
        if (typeof e.data === "string") onNotice(JSON.parse(e.data));
        else if (this.onmessage) this.onmessage(e);
      };
    }
    get binaryType() { return this.ws.binaryType; }
    set binaryType(value) { this.ws.binaryType = value; }
    get protocol() { return this.ws.protocol; }
    get readyState() { return this.ws.readyState; }
    send(data) { this.ws.send(data); }
    close(code, reason) { this.ws.close(code, reason); }
  }

  async function connect() {
    clearTimeout(retry);
    if (rfb || !wanted) return;
    if (screen.dataset.state !== "running") { say("the domain is not running"); return; }
    say("connecting…");
    if (!RFB) RFB = (await import(screen.dataset.rfb)).default;
    const [resp, body] = await window.domusConsoleTicket(screen.dataset.domain, "vnc");
    if (!resp.ok) { say("cannot connect: " + (body.detail || resp.status), "bad"); return; }
    if (rfb || !wanted) return; // hidden or connected meanwhile
    viewOnly = body.mode === "view";
    inControl = false;
    channel = new RfbChannel(new WebSocket(body.socket), showPresence);
    rfb = new RFB(screen, channel, { shared: true });
    rfb.viewOnly = true; // until the agent says this viewer holds control
    rfb.scaleViewport = document.getElementById("vnc-scale").checked;
    rfb.background = "#10151c";
    rfb.addEventListener("connect", () => {
      say(viewOnly ? "watching (read-only: you may not type here)" : "connected", "ok");
    });
    rfb.addEventListener("desktopname", (e) => { screen.title = e.detail.name; });
    rfb.addEventListener("disconnect", () => {
      const why = channel ? channel.closeReason : "";
      const refused = channel && channel.closeCode === 4403;
      rfb = null; channel = null; presence.hidden = true;
      const again = wanted && !refused && screen.dataset.state === "running";
      say("disconnected" + (why ? ": " + why : "") + (again ? " — reconnecting…" : ""), again || refused ? "bad" : "");
      if (again) retry = setTimeout(connect, 2000);
    });
  }

  function disconnect() {
    clearTimeout(retry);
    if (rfb) rfb.disconnect();
  }

  // Who watches, who types: one viewer at a time holds control; the others take it explicitly.
  function showPresence(p) {
    if (p.type !== "presence") return;
    inControl = window.domusShowPresence(presence, take, p, viewOnly);
    if (rfb) rfb.viewOnly = !inControl;
  }
  take.addEventListener("click", () => {
    if (channel && channel.readyState === WebSocket.OPEN) channel.ws.send('{"type": "take-control"}');
  });

  // -- the toolbar ---------------------------------------------------------------------------
  const KEYS = {
    ctrl: [0xffe3, "ControlLeft"], alt: [0xffe9, "AltLeft"], shift: [0xffe1, "ShiftLeft"],
    altgr: [0xfe03, "AltRight"], f1: [0xffbe, "F1"], f2: [0xffbf, "F2"], f4: [0xffc1, "F4"],
    f7: [0xffc4, "F7"], backspace: [0xff08, "Backspace"], tab: [0xff09, "Tab"],
    print: [0xff61, "PrintScreen"], escape: [0xff1b, "Escape"], enter: [0xff0d, "Enter"],
  };
  // Press the keys of a combination in order, release them in reverse.
  function combo(names) {
    if (!rfb || !inControl) { say("take control first to type into the guest", "bad"); return; }
    names.forEach((n) => rfb.sendKey(KEYS[n][0], KEYS[n][1], true));
    names.slice().reverse().forEach((n) => rfb.sendKey(KEYS[n][0], KEYS[n][1], false));
    rfb.focus();
  }
  panel.querySelector('[data-vnc="ctrl-alt-del"]').addEventListener("click", () => {
    if (!rfb || !inControl) { say("take control first to type into the guest", "bad"); return; }
    rfb.sendCtrlAltDel();
    rfb.focus();
  });
  const keys = document.getElementById("vnc-keys");
  keys.addEventListener("change", () => {
    if (keys.value) combo(keys.value.split("-"));
    keys.value = "";
  });
  document.getElementById("vnc-scale").addEventListener("change", (e) => {
    if (rfb) rfb.scaleViewport = e.target.checked;
  });
  panel.querySelector('[data-vnc="screenshot"]').addEventListener("click", () => {
    if (!rfb) return;
    rfb.toBlob((blob) => {
      const a = document.createElement("a");
      const stamp = new Date().toISOString().replace(/[-:]/g, "").slice(0, 15);
      a.href = URL.createObjectURL(blob);
      a.download = screen.dataset.name + "-screen-" + stamp + ".png";
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    }, "image/png");
  });
  panel.querySelector('[data-vnc="fullscreen"]').addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else screen.requestFullscreen().then(() => rfb && rfb.focus());
  });

  // "Type this text": keystrokes for the guest's layout (keyboard.js), a few milliseconds apart
  // so that the guest's keyboard buffer keeps up.
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function typeText(text, layout) {
    const { strokes, unplaced } = window.domusKeyboard.strokes(text, layout);
    for (const s of strokes) {
      if (!rfb || !inControl) return { typed: false, unplaced };
      const mods = s.mod ? [s.mod] : [];
      mods.forEach((m) => rfb.sendKey(KEYS[m][0], KEYS[m][1], true));
      rfb.sendKey(s.keysym, s.code, true);
      rfb.sendKey(s.keysym, s.code, false);
      mods.forEach((m) => rfb.sendKey(KEYS[m][0], KEYS[m][1], false));
      await sleep(8);
    }
    return { typed: true, unplaced };
  }
  document.getElementById("vnc-type").addEventListener("submit", async (e) => {
    e.preventDefault();
    const result = document.getElementById("vnc-type-result");
    if (!rfb || !inControl) { result.textContent = "take control first to type into the guest"; return; }
    const text = document.getElementById("vnc-text").value + (document.getElementById("vnc-enter").checked ? "\n" : "");
    const layout = document.getElementById("vnc-layout").value;
    const done = await typeText(text, layout);
    result.textContent = !done.typed ? "stopped: control was lost"
      : "typed " + [...text].length + " characters" +
        (done.unplaced ? " (" + done.unplaced + " not on this keyboard, sent as symbols)" : "");
    if (done.typed) rfb.focus();
  });

  document.addEventListener("domus:console-tab", (e) => {
    wanted = e.detail.tab === "graphical";
    if (wanted) connect(); else disconnect();
  });
  document.addEventListener("domus:domain-state", (e) => {
    screen.dataset.state = e.detail.state;
    if (e.detail.state === "running") connect();
    else if (!rfb) say(e.detail.state === "failed" ? "the domain was never created" : "the domain is " + (e.detail.state_label || e.detail.state).toLowerCase());
  });
  window.domusVnc = { get rfb() { return rfb; }, get inControl() { return inControl; } }; // for tests
})();
