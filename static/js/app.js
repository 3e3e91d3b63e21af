// Progressive enhancement only: every form works without this file.
(function () {
  "use strict";
  // Result page: the print button needs script, so it stays hidden without it.
  var printButton = document.getElementById("print-report");
  if (printButton) {
    printButton.hidden = false;
    printButton.addEventListener("click", function () { window.print(); });
  }
})();

(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) { return; }
  var select = form.querySelector("select[name=model]");
  var radios = form.querySelectorAll("input[name=modality]");

  function currentModality() {
    for (var i = 0; i < radios.length; i++) { if (radios[i].checked) { return radios[i].value; } }
    return "ct";
  }

  // Mark the architectures not installed for the chosen modality.
  function refresh() {
    var modality = currentModality();
    Array.prototype.forEach.call(select.options, function (option) {
      var state = option.getAttribute("data-" + modality);
      if (!option.dataset.label) { option.dataset.label = option.textContent; }
      option.disabled = state === "missing";
      option.textContent = option.dataset.label + (state === "missing" ? " (not installed)" : "");
    });
    if (select.selectedOptions.length && select.selectedOptions[0].disabled) { select.value = "all"; }
  }
  Array.prototype.forEach.call(radios, function (radio) { radio.addEventListener("change", refresh); });
  refresh();

  form.addEventListener("submit", function () {
    var button = form.querySelector("button[type=submit]");
    if (button) { button.disabled = true; button.textContent = "Analysing\u2026"; }
  });
})();
