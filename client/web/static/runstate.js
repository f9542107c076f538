// runstate's web view, live: follows /api/v1/watch/{pathspec} for the page's object and
// updates states and counts in place. The page is complete without it. EventSource
// reconnects by itself and resends Last-Event-ID, so the gateway resumes with no change
// lost (a snapshot first when the state moved on meanwhile).
"use strict";
(function () {
  var body = document.body;
  var watched = body.getAttribute("data-watch");
  if (!watched || !window.EventSource) return;
  var STATES = ["pending", "running", "completed", "failed", "cancelled", "crashed"];
  var live = document.getElementById("live");

  function setLive(text, cls) {
    if (live) { live.textContent = text; live.className = "live " + cls; }
  }

  function setState(el, state) {
    el.textContent = state;
    el.className = "state state-" + state;
  }

  function cell(tr, child) {
    var td = document.createElement("td");
    if (typeof child === "string") td.textContent = child; else td.appendChild(child);
    tr.appendChild(td);
    return td;
  }

  function badge(state) {
    var span = document.createElement("span");
    setState(span, state);
    return span;
  }

  function stepStatus(states) {
    if (!states.length) return "pending";
    var active = states.filter(function (s) { return s === "running" || s === "pending"; });
    if (active.length) {
      return states.some(function (s) { return s !== "pending"; }) ? "running" : "pending";
    }
    return states.every(function (s) { return s === "completed"; }) ? "completed" : "failed";
  }

  // The same row as the server's step_row (client/web/_pages.py).
  function stepRow(step) {
    var states = Object.keys(step.task_states).map(function (k) { return step.task_states[k]; });
    var counts = {};
    states.forEach(function (s) { counts[s] = (counts[s] || 0) + 1; });
    var done = states.filter(function (s) { return s !== "pending" && s !== "running"; }).length;
    var tr = document.createElement("tr");
    tr.setAttribute("data-step", step.name);
    cell(tr, step.name);
    cell(tr, badge(stepStatus(states)));
    var progress = document.createElement("progress");
    progress.value = done;
    progress.max = Math.max(states.length, 1);
    var td = cell(tr, progress);
    td.appendChild(document.createTextNode(" " + done + "/" + states.length));
    var text = STATES.filter(function (s) { return counts[s]; })
      .map(function (s) { return s + " " + counts[s]; }).join(" · ");
    cell(tr, text).className = "counts";
    return tr;
  }

  function applyRun(run) {
    document.querySelectorAll('[data-run="' + CSS.escape(run.pathspec) + '"] .state')
      .forEach(function (el) { if (!el.closest("#steps")) setState(el, run.state); });
    var table = document.getElementById("steps");
    if (!table || !document.querySelector('section[data-run="' + CSS.escape(run.pathspec) + '"]')) return;
    if (table.tagName !== "TABLE") {
      var fresh = document.createElement("table");
      fresh.id = "steps";
      fresh.innerHTML = "<thead><tr><th>step</th><th>status</th><th>progress</th>" +
        "<th>tasks by state</th></tr></thead><tbody></tbody>";
      table.replaceWith(fresh);
      table = fresh;
    }
    var tbody = table.querySelector("tbody");
    tbody.replaceChildren.apply(tbody, run.steps.map(stepRow));
  }

  function applyTask(task) {
    document.querySelectorAll('[data-task="' + CSS.escape(task.pathspec) + '"]')
      .forEach(function (bar) {
        bar.className = "bar state-" + task.state;
        bar.title = task.pathspec + ": " + task.state;
      });
    var page = document.querySelector('[data-task-page="' + CSS.escape(task.pathspec) + '"]');
    var el = document.getElementById("task-state");
    if (page && el) setState(el, task.state);
  }

  function apply(views) {
    (views.runs || []).forEach(applyRun);
    (views.tasks || []).forEach(applyTask);
  }

  var path = watched.split("/").map(encodeURIComponent).join("/");
  var source = new EventSource("/api/v1/watch/" + path);
  source.addEventListener("snapshot", function (e) {
    var data = JSON.parse(e.data);
    apply(data);
    body.setAttribute("data-sequence", data.sequence);
  });
  source.addEventListener("change", function (e) {
    var data = JSON.parse(e.data);
    data.changes.forEach(apply);
    body.setAttribute("data-sequence", data.sequence);
  });
  source.addEventListener("error", function (e) {
    if (e.data) { setLive("stopped: " + JSON.parse(e.data).detail, "off"); source.close(); }
  });
  source.onopen = function () { setLive("live", "on"); };
  source.onerror = function () {
    if (source.readyState !== EventSource.CLOSED) setLive("reconnecting…", "off");
  };
})();
