// The domain page's console tabs (serial, graphical): one shown at a time; the page's address
// keeps the choice (#graphical), and a "domus:console-tab" event tells the consoles.
(function () {
  "use strict";
  const tabs = [...document.querySelectorAll('.console-tabs [role="tab"]')];
  if (!tabs.length) return;
  function show(tab) {
    tabs.forEach((t) => {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    });
    const name = tab.id.replace("tab-", "");
    history.replaceState(null, "", name === "serial" ? location.pathname + location.search : "#" + name);
    window.dispatchEvent(new Event("resize")); // the terminal fits itself to its shown size
    document.dispatchEvent(new CustomEvent("domus:console-tab", { detail: { tab: name } }));
  }
  tabs.forEach((t) => t.addEventListener("click", () => show(t)));
  show(document.getElementById("tab-" + location.hash.slice(1)) || tabs[0]);
})();
