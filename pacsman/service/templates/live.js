(function () {
  "use strict";
  var shown = document.getElementById("refreshed");
  var every = 3000;
  function later(took) {
    // A large job takes a while to read: ask again after 3 s, or 4 times as long as it took.
    window.setTimeout(refresh, Math.max(every, 4 * took));
  }
  function refresh() {
    if (document.hidden || !document.querySelector("[data-live]")) {
      later(0);
      return;
    }
    var target = document.body.getAttribute("data-refresh") || window.location.href;
    var started = Date.now();
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
      })
      .then(function () { later(Date.now() - started); });
  }
  later(0);
}());
