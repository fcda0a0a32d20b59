// A form with data-confirm="question" asks before it is sent: the CSP runs no onsubmit="..."
// attribute, so the question lives in the markup and the asking here.
(function () {
  "use strict";
  document.addEventListener("submit", (event) => {
    const message = event.target instanceof HTMLFormElement && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });
})();
