// The jobs page. live.js (loaded by every page) applies job events to these rows: status,
// progress and step, and sends a Cancel click to the API. This keeps each row's Cancel button
// in step with its status: a queued job can be cancelled, a running one only when its kind can
// stop half-way (data-cancellable) and no one has asked it to yet.
(function () {
  "use strict";
  const table = document.getElementById("job-list");
  if (!table) return;

  function renderCancel(row) {
    const cell = row.querySelector("[data-cancel-cell]");
    const status = row.querySelector('[data-field="status"]').textContent.trim();
    const wanted = status === "queued" || (status === "running" && row.dataset.cancellable === "1");
    const button = cell.querySelector("button[data-cancel]");
    if (wanted && !button) {
      const b = document.createElement("button");
      Object.assign(b, { type: "button", className: "small", textContent: "Cancel" });
      b.dataset.cancel = row.dataset.job;
      cell.replaceChildren(b);
    } else if (!wanted && button) {
      cell.replaceChildren();
    }
  }

  table.querySelectorAll("tr[data-job]").forEach((row) => {
    const badge = row.querySelector('[data-field="status"]');
    new MutationObserver(() => renderCancel(row)).observe(badge, { childList: true, characterData: true, subtree: true });
  });

  // A running job is asked to stop once (live.js sends the request; its answer, a running job
  // whose step says it is cancelling, re-renders the row without the button).
  table.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-cancel]");
    const row = button && button.closest("tr[data-job]");
    if (row && row.querySelector('[data-field="status"]').textContent.trim() === "running") {
      row.dataset.cancellable = "0";
      button.textContent = "Cancelling…";
    }
  });
})();
