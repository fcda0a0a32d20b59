// Deleting a domain asks first, naming what will be lost: with "with disks" ticked, the volumes
// as the host reports them now (read at the moment of the click, not when the page was loaded).
(function () {
  "use strict";
  const form = document.getElementById("delete-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = form.dataset.name;
    let message = `Delete ${name}? Its disks are kept.`;
    if (form.elements.namedItem("delete_disks").checked) {
      let volumes = null;
      try {
        const response = await fetch(form.dataset.api, { credentials: "same-origin" });
        if (response.ok) volumes = (await response.json()).disks.filter((d) => d.device === "disk").map((d) => d.path);
      } catch (err) { volumes = null; }
      message = volumes === null ? `Delete ${name} and destroy all its disks? (Their list could not be read.)`
        : volumes.length ? `Delete ${name}? These volumes will be destroyed:\n  ${volumes.join("\n  ")}`
        : `Delete ${name}? It has no disk.`;
    }
    if (window.confirm(message)) HTMLFormElement.prototype.submit.call(form);  // no second submit event
  });
})();
