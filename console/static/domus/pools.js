// A host's storage: the "New storage pool" form shows only the fields its type uses, and the
// pools table (host page) and volumes table (pool page) follow changes live: a "host.resources"
// event (a pool made, started, filled or removed, perhaps with virsh) or a pool or volume job on
// this host ending, both passed on by live.js as "domus:<type>" DOM events, and the live socket
// (re)connecting ("domus:resync": what happened while it was down). The table is then
// read again from the page itself, so what it shows is always what the server renders.
(() => {
  const form = document.querySelector("[data-pool-form]");
  if (form) {
    const type = form.querySelector("[data-pool-type]");
    const show = () => {
      form.querySelectorAll("[data-for]").forEach((el) => {
        const on = el.dataset.for.split(" ").includes(type.value);
        el.hidden = !on;
        el.querySelectorAll("input").forEach((input) => { input.disabled = !on; });
      });
    };
    type.addEventListener("change", show);
    show();
  }

  const table = document.querySelector("[data-storage-host]");
  if (!table) return;
  const host = table.dataset.storageHost;
  let pending = null;
  const reread = () => {
    clearTimeout(pending); // a burst of changes: read the page once
    pending = setTimeout(async () => {
      const resp = await fetch(location.pathname + location.search, { credentials: "same-origin" });
      if (!resp.ok) return;
      const page = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = page.querySelector("[data-storage-host] tbody");
      const shown = document.querySelector("[data-storage-host] tbody");
      if (fresh && shown) shown.replaceWith(document.adoptNode(fresh));
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
    if (ended && String(job.host) === host && /^(pool|volume)\./.test(job.kind)) reread();
  });
})();
