// The API page: Swagger UI over the OpenAPI document, and copy buttons for the examples.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  if (root && window.SwaggerUIBundle) {
    var fallback = document.getElementById("swagger-ui-fallback");
    if (fallback) { fallback.hidden = true; }
    window.SwaggerUIBundle({
      url: root.getAttribute("data-openapi-url"),
      domNode: root,
      presets: [window.SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      deepLinking: false,
      validatorUrl: null,  // the public validator would be a request off the site
      defaultModelsExpandDepth: 0,
      docExpansion: "list"
    });
  }

  function select(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // Without the clipboard API (plain http off localhost) the text is selected instead.
  Array.prototype.forEach.call(document.querySelectorAll("button[data-copy]"), function (button) {
    var target = document.getElementById(button.getAttribute("data-copy"));
    if (!target) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      var text = target.textContent;
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { select(target); });
      } else {
        select(target);
      }
    });
  });
})();
