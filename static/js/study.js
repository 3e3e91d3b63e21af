// Study pages, progressive enhancement only: without script the running page refreshes
// itself (<noscript> meta refresh) and the forms post as usual.
(function () {
  "use strict";
  var POLL_MS = 1000;
  var RETRY_MS = 3000;
  var box = document.getElementById("study-progress");
  if (!box) { return; }
  var url = box.getAttribute("data-status-url");
  var bar = document.getElementById("progress-bar");
  var doneText = document.getElementById("progress-done");
  var totalText = document.getElementById("progress-total");
  var eta = document.getElementById("progress-eta");
  var statusText = document.getElementById("study-status");
  var reference = null; // {time, done}: where the rate is measured from

  function startedAt(iso) {
    var time = iso ? Date.parse(iso) : NaN;
    // A server clock far from this one would give nonsense: measure from now instead.
    return isNaN(time) || time > Date.now() || Date.now() - time > 86400000 ? null : time;
  }

  function remaining(done, total) {
    if (!reference || done <= reference.done || done >= total) { return ""; }
    var rate = (done - reference.done) / (Date.now() - reference.time); // images per ms
    var seconds = Math.max(1, Math.round((total - done) / rate / 1000));
    if (seconds < 90) { return "about " + seconds + " s left"; }
    return "about " + Math.round(seconds / 60) + " min left";
  }

  function update(view) {
    if (view.status === "done" || view.status === "failed") {
      window.location.reload();
      return false;
    }
    var done = view.progress.done, total = view.progress.total;
    bar.max = total;
    bar.value = done;
    bar.textContent = done + " / " + total;
    doneText.textContent = String(done);
    totalText.textContent = String(total);
    if (view.status === "running" && !reference) {
      var started = startedAt(view.started_at);
      reference = started ? { time: started, done: 0 } : { time: Date.now(), done: done };
    }
    var left = remaining(done, total);
    eta.hidden = !left;
    eta.textContent = left ? "\u00b7 " + left : "";
    statusText.setAttribute("data-status", view.status);
    statusText.textContent = view.status === "queued" ? "Queued: waiting for a worker."
      : "Running: the models are reading the images.";
    box.setAttribute("data-polled", String(Number(box.getAttribute("data-polled") || 0) + 1));
    return true;
  }

  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store",
                 credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 404) { window.location.reload(); return null; }
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.json();
      })
      .then(function (view) {
        if (view && update(view)) { window.setTimeout(poll, POLL_MS); }
      })
      .catch(function () { window.setTimeout(poll, RETRY_MS); });
  }
  window.setTimeout(poll, POLL_MS);
})();

(function () {
  "use strict";
  // The upload form: a file input left empty is not sent at all, and the button says
  // what is happening while a large series uploads.
  var form = document.querySelector("form.study-form");
  if (!form) { return; }
  form.addEventListener("submit", function () {
    Array.prototype.forEach.call(form.querySelectorAll("input[type=file]"), function (input) {
      if (!input.files || input.files.length === 0) { input.disabled = true; }
    });
    window.setTimeout(function () {
      var button = form.querySelector("button[type=submit]");
      if (button) { button.disabled = true; button.textContent = "Uploading\u2026"; }
    }, 0);
  });
  // Back from the next page (bfcache), the form must work again.
  window.addEventListener("pageshow", function () {
    Array.prototype.forEach.call(form.querySelectorAll("input[type=file], button[type=submit]"),
      function (input) { input.disabled = false; });
  });
})();
