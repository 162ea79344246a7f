// resin dashboard: the device page's live logs. Hand-written, no
// dependencies. Reads the session's server-sent-event stream of the device's
// log lines (the API's follow stream), appends lines as text (never HTML),
// and shows the stream's state: live, paused, or dropped and reconnecting
// (EventSource reconnects by itself; we say so while it does).
(function () {
  "use strict";
  var section = document.getElementById("logs");
  if (!section || !window.EventSource) { return; }
  var url = section.getAttribute("data-stream");
  var out = document.getElementById("log-lines");
  var state = document.getElementById("log-state");
  var pauseBtn = document.getElementById("log-pause");
  var filter = document.getElementById("log-service");
  var MAX_LINES = 2000;
  var paused = false;
  var held = [];
  var source = null;

  function setState(cls, text) {
    state.className = "state " + cls;
    state.textContent = text;
    section.setAttribute("data-state", cls);
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function stamp(ms) {
    var d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) +
      "T" + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + "Z";
  }

  function shown(span) {
    var want = filter.value;
    return !want || span.getAttribute("data-service") === want;
  }

  function append(line) {
    var span = document.createElement("span");
    span.className = "line" + (line.isStderr ? " err" : "");
    span.setAttribute("data-service", line.service || "");
    span.textContent = stamp(line.timestamp) + " " + (line.service || "-") + " " + line.message + "\n";
    if (!shown(span)) { span.classList.add("hidden"); }
    var atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.appendChild(span);
    while (out.childNodes.length > MAX_LINES) { out.removeChild(out.firstChild); }
    if (atBottom) { out.scrollTop = out.scrollHeight; }
  }

  function connect() {
    source = new EventSource(url);
    source.onopen = function () { setState(paused ? "paused" : "live", paused ? "paused" : "live"); };
    source.onmessage = function (ev) {
      var line;
      try { line = JSON.parse(ev.data); } catch (e) { return; }
      if (paused) { held.push(line); } else { append(line); }
    };
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        // The server refused (e.g. the session expired): try again later.
        setState("dropped", "stream dropped, reconnecting…");
        setTimeout(connect, 3000);
      } else {
        setState("dropped", "stream dropped, reconnecting…");
      }
    };
  }

  pauseBtn.hidden = false;
  pauseBtn.addEventListener("click", function () {
    paused = !paused;
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      held.forEach(append);
      held = [];
      setState("live", "live");
    } else {
      setState("paused", "paused");
    }
  });
  filter.addEventListener("change", function () {
    Array.prototype.forEach.call(out.querySelectorAll("span.line"), function (span) {
      span.classList.toggle("hidden", !shown(span));
    });
  });
  setState("connecting", "connecting…");
  connect();
}());
