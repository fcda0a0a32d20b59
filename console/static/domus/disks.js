// A domain's disks, CD-ROMs and network cards: the "Attach" form shows the fields of what is
// attached, and each table follows a job of its kind on this domain ending (and the live socket
// reconnecting) by reading the page again, so what it shows (pending changes too) is what the
// server renders. While a table says such a job of the domain is still queued or running, it is
// read again every 1.5 s as well: a job may end between the page's rendering and its live
// socket's subscription, and that event is not sent again.
(() => {
  const follow = (selector, jobs, kinds) => {
    const section = document.querySelector(selector);
    if (!section) return;
    const domain = section.dataset.domainDisks || section.dataset.domainNics;
    let pending = null;
    let polls = 0;
    const unfinished = () => Number((section.querySelector("table") || { dataset: {} }).dataset[jobs] || 0);
    const reread = (delay = 300) => {
      clearTimeout(pending);
      pending = setTimeout(async () => {
        const resp = await fetch(location.pathname, { credentials: "same-origin" });
        if (!resp.ok) return;
        const page = new DOMParser().parseFromString(await resp.text(), "text/html");
        const fresh = page.querySelector(selector + " table");
        const shown = section.querySelector("table");
        if (fresh && shown) shown.replaceWith(document.adoptNode(fresh));
        if (unfinished() && polls++ < 200) reread(1500);
      }, delay);
    };
    if (unfinished()) reread(1500);
    document.addEventListener("domus:resync", () => reread());
    document.addEventListener("domus:job.updated", (e) => {
      const job = e.detail.job;
      const ended = ["succeeded", "failed", "cancelled"].includes(job.status);
      if (ended && String(job.domain) === domain && kinds.test(job.kind)) reread();
    });
    return section;
  };

  const disks = follow("[data-domain-disks]", "diskJobs", /^domain\.disk\./);
  follow("[data-domain-nics]", "nicJobs", /^domain\.nic\./);
  if (!disks) return;
  const kind = disks.querySelector("[data-attach-kind]");
  if (!kind) return;
  const show = () => disks.querySelectorAll("[data-attach-for]").forEach((el) => {
    el.hidden = el.dataset.attachFor !== kind.value;
    el.querySelectorAll("input, select").forEach((input) => { input.disabled = el.hidden; });
  });
  kind.addEventListener("change", show);
  show();
})();
