// The dashboard's only script: live regions and action buttons, with plain fetch.
//
// An element with data-live="URL" is re-rendered from URL (an HTML fragment of the same
// template) every few seconds. A button with data-action="URL" POSTs there after a
// confirmation, with the session cookie and the CSRF header, and shows what came back.
(function () {
  "use strict";
  var PERIOD_MS = 2000;
  var body = document.body;

  function refresh(element) {
    return fetch(element.dataset.live, {
      credentials: "same-origin",
      headers: { "X-BMS-Fragment": "1", Accept: "text/html" },
    })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload(); // the session ended: the page sends us to the login
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null) element.innerHTML = html;
      })
      .catch(function () {
        /* the API is restarting: the next tick tries again */
      });
  }

  function refreshAll() {
    return Promise.all(Array.prototype.map.call(document.querySelectorAll("[data-live]"), refresh));
  }

  function flash(text, bad) {
    var box = document.getElementById("flash");
    box.textContent = text;
    box.className = bad ? "shown bad" : "shown";
    window.clearTimeout(flash.timer);
    flash.timer = window.setTimeout(function () { box.className = ""; }, 6000);
  }

  function describe(data) {
    if (data && Array.isArray(data.cancelled)) return data.cancelled.length + " request(s) cancelled";
    if (data && Array.isArray(data.retried)) return data.retried.length + " request(s) retried";
    if (data && Array.isArray(data.tearing_down)) {
      var skipped = Array.isArray(data.skipped) ? data.skipped.length : 0;
      return data.tearing_down.length + " request(s) tearing down, " + skipped + " skipped";
    }
    if (data && typeof data.detail === "string") return data.detail;
    return "done";
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-action]");
    if (!button) return;
    event.preventDefault();
    if (!window.confirm(button.dataset.confirm || "Are you sure?")) return;
    var headers = {};
    headers[body.dataset.csrfHeader] = body.dataset.csrf;
    button.disabled = true;
    fetch(button.dataset.action, { method: "POST", credentials: "same-origin", headers: headers })
      .then(function (response) {
        return response.json().then(function (data) {
          flash(describe(data), !response.ok);
        });
      })
      .catch(function (error) { flash("the API did not answer: " + error, true); })
      .then(function () {
        button.disabled = false;
        return refreshAll();
      });
  });

  window.setInterval(refreshAll, Number(body.dataset.refreshMs) || PERIOD_MS);
})();
