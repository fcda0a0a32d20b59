// A domain's disks and CD-ROMs: the "Attach" form shows the fields of what is attached, and the
// table follows a disk job of this domain ending (and the live socket reconnecting) by reading
// the page again, so what it shows (pending changes too) is what the server renders. While the
// table says a disk job of the domain is still queued or running, it is read again every 1.5 s
// as well: a job may end between the page's rendering and its live socket's subscription, and
// that event is not sent again.
(() => {
  const section = document.querySelector("[data-domain-disks]");
  if (!section) return;
  const domain = section.dataset.domainDisks;
  const wire = (root) => {
    const kind = root.querySelector("[data-attach-kind]");
    if (!kind) return;
    const show = () => root.querySelectorAll("[data-attach-for]").forEach((el) => {
      el.hidden = el.dataset.attachFor !== kind.value;
      el.querySelectorAll("input, select").forEach((input) => { input.disabled = el.hidden; });
    });
    kind.addEventListener("change", show);
    show();
  };
  wire(section);
  let pending = null;
  let polls = 0;
  const unfinished = () => Number((section.querySelector("table") || { dataset: {} }).dataset.diskJobs || 0);
  const reread = (delay = 300) => {
    clearTimeout(pending);
    pending = setTimeout(async () => {
      const resp = await fetch(location.pathname, { credentials: "same-origin" });
      if (!resp.ok) return;
      const page = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = page.querySelector("[data-domain-disks] table");
      const shown = section.querySelector("table");
      if (fresh && shown) shown.replaceWith(document.adoptNode(fresh));
      if (unfinished() && polls++ < 200) reread(1500);
    }, delay);
  };
  if (unfinished()) reread(1500);
  document.addEventListener("domus:resync", reread);
  document.addEventListener("domus:job.updated", (e) => {
    const job = e.detail.job;
    const ended = ["succeeded", "failed", "cancelled"].includes(job.status);
    if (ended && String(job.domain) === domain && /^domain\.disk\./.test(job.kind)) reread();
  });
})();
