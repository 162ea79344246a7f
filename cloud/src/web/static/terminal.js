// resin dashboard: the device terminal. Hand-written; uses the vendored
// xterm.js (window.Terminal). Asks the page's own session for a single-use
// ticket (30 s), opens the device's session WebSocket with it, and speaks
// the tunnel framing of docs/interfaces.md ("Tunnel"): one binary message =
// [version 1, type, stream u32 BE, payload]. It opens a login shell on a PTY
// the terminal's size, writes Data/Stderr to the screen and credits it,
// sends keys as Data and size changes as Resize, and shows the Close.
(function () {
  "use strict";
  var section = document.getElementById("terminal");
  if (!section || !window.Terminal || !window.WebSocket) { return; }
  var device = section.getAttribute("data-device");
  var csrf = section.getAttribute("data-csrf");
  var state = document.getElementById("terminal-state");
  var OPEN = 1, DATA = 3, STDERR = 4, CREDIT = 5, RESIZE = 6, CLOSE = 8;
  var STREAM = 1;
  var enc = new TextEncoder();
  var dec = new TextDecoder();

  function setState(cls, text) {
    state.className = "state " + cls;
    state.textContent = text;
    section.setAttribute("data-state", cls);
  }

  function frame(type, payload) {
    var out = new Uint8Array(6 + payload.length);
    out[0] = 1;
    out[1] = type;
    new DataView(out.buffer).setUint32(2, STREAM);
    out.set(payload, 6);
    return out;
  }
  function u32(n) {
    var b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, n);
    return b;
  }
  function size(cols, rows) {
    var b = new Uint8Array(4);
    var v = new DataView(b.buffer);
    v.setUint16(0, cols);
    v.setUint16(2, rows);
    return b;
  }

  var term = new window.Terminal({ cols: 100, rows: 30, convertEol: false });
  term.open(document.getElementById("terminal-screen"));

  function connect(url) {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + window.location.host + url);
    ws.binaryType = "arraybuffer";
    var closed = false;
    ws.onopen = function () {
      var open = { kind: "shell", tty: { cols: term.cols, rows: term.rows } };
      ws.send(frame(OPEN, enc.encode(JSON.stringify(open))));
      setState("live", "connected");
      term.focus();
    };
    ws.onmessage = function (ev) {
      var b = new Uint8Array(ev.data);
      if (b.length < 6 || b[0] !== 1) { return; }
      var payload = b.subarray(6);
      if (b[1] === DATA || b[1] === STDERR) {
        term.write(payload);
        ws.send(frame(CREDIT, u32(payload.length)));
      } else if (b[1] === CLOSE) {
        closed = true;
        var info = {};
        try { info = JSON.parse(dec.decode(payload)); } catch (e) { info = {}; }
        var why = info.error ? info.error : "exit " + info.exitCode;
        setState("closed", "session ended (" + why + ")");
        ws.close();
      }
    };
    ws.onclose = function () {
      if (!closed) { setState("closed", "connection closed"); }
    };
    term.onData(function (d) {
      if (ws.readyState === WebSocket.OPEN) { ws.send(frame(DATA, enc.encode(d))); }
    });
    term.onResize(function (s) {
      if (ws.readyState === WebSocket.OPEN) { ws.send(frame(RESIZE, size(s.cols, s.rows))); }
    });
  }

  var req = new XMLHttpRequest();
  req.open("POST", "/devices/" + encodeURIComponent(device) + "/terminal/ticket");
  req.setRequestHeader("X-CSRF-Token", csrf);
  req.onload = function () {
    if (req.status !== 200) {
      setState("closed", "no ticket: HTTP " + req.status);
      return;
    }
    var t = JSON.parse(req.responseText);
    connect(t.url);
  };
  req.onerror = function () { setState("closed", "no ticket: the cloud did not answer"); };
  req.send();
}());
