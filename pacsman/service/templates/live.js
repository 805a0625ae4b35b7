(function () {
  "use strict";
  var shown = document.getElementById("refreshed");
  function refresh() {
    if (document.hidden || !document.querySelector("[data-live]")) {
      return;
    }
    var target = document.body.getAttribute("data-refresh") || window.location.href;
    fetch(target, {credentials: "same-origin", cache: "no-store"})
      .then(function (answer) {
        if (!answer.ok) { throw new Error("HTTP " + answer.status); }
        return answer.text();
      })
      .then(function (html) {
        var page = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (old) {
          var fresh = page.getElementById(old.id);
          if (fresh) { old.replaceWith(document.importNode(fresh, true)); }
        });
        if (shown) { shown.textContent = "Updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function () {
        if (shown) { shown.textContent = "The service did not answer; trying again."; }
      });
  }
  window.setInterval(refresh, 3000);
}());
