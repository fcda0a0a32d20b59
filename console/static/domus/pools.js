// A host's storage and networks: the "New storage pool" and "New virtual network" forms show
// only the fields their type or mode uses, and the pools and networks tables (host page) and
// volumes table (pool page) follow changes live: a "host.resources" event (a pool or network made,
// started, filled or removed, perhaps with virsh) or a pool, volume or network job on this host
// ending, both passed on by live.js as "domus:<type>" DOM events, and the live socket
// (re)connecting ("domus:resync": what happened while it was down). The tables are then read
// again from the page itself, so what they show is always what the server renders.
(() => {
  const follow = (form, select) => {
    if (!form) return;
    const kind = form.querySelector(select);
    const show = () => {
      form.querySelectorAll("[data-for]").forEach((el) => {
        const on = el.dataset.for.split(" ").includes(kind.value);
        el.hidden = !on;
        el.querySelectorAll("input, select").forEach((input) => { input.disabled = !on; });
      });
    };
    kind.addEventListener("change", show);
    show();
  };
  follow(document.querySelector("[data-pool-form]"), "[data-pool-type]");
  follow(document.querySelector("[data-network-form]"), "[data-network-mode]");

  const table = document.querySelector("[data-storage-host], [data-networks-host]");
  if (!table) return;
  const host = table.dataset.storageHost || table.dataset.networksHost;
  let pending = null;
  const reread = () => {
    clearTimeout(pending); // a burst of changes: read the page once
    pending = setTimeout(async () => {
      const resp = await fetch(location.pathname + location.search, { credentials: "same-origin" });
      if (!resp.ok) return;
      const page = new DOMParser().parseFromString(await resp.text(), "text/html");
      for (const which of ["[data-storage-host] tbody", "[data-networks-host] tbody"]) {
        const fresh = page.querySelector(which);
        const shown = document.querySelector(which);
        if (fresh && shown) shown.replaceWith(document.adoptNode(fresh));
      }
      const count = page.querySelector("[data-volume-count]");
      const said = document.querySelector("[data-volume-count]");
      if (count && said) said.replaceWith(document.adoptNode(count));
    }, 300);
  };
  document.addEventListener("domus:resync", reread);
  document.addEventListener("domus:host.resources", (e) => {
    if (String(e.detail.host.id) === host) reread();
  });
  document.addEventListener("domus:job.updated", (e) => {
    const job = e.detail.job;
    const ended = ["succeeded", "failed", "cancelled"].includes(job.status);
    if (ended && String(job.host) === host && /^(pool|volume|network)\./.test(job.kind)) reread();
  });
})();
