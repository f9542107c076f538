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

  // A time as the server shows it: "2026-12-06 14:31:58" (UTC).
  function when(iso) {
    return iso ? iso.slice(0, 19).replace("T", " ") : "";
  }

  function fields(scope, view) {
    scope.querySelectorAll("[data-field]").forEach(function (el) {
      var name = el.getAttribute("data-field");
      var value = view[name];
      el.textContent = /_at$/.test(name) ? when(value) : (value == null ? "" : value);
    });
  }

  // The same row as the server's _run_row (client/web/_pages.py), for a new run.
  function runRow(run) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-run", run.pathspec);
    var a = document.createElement("a");
    a.href = "/runs/" + run.pathspec.split("/").map(encodeURIComponent).join("/");
    a.textContent = run.run_id;
    cell(tr, a);
    cell(tr, badge(run.state));
    cell(tr, when(run.created_at));
    cell(tr, "").setAttribute("data-field", "started_at");
    cell(tr, "").setAttribute("data-field", "finished_at");
    cell(tr, "");
    cell(tr, run.user || "");
    var tags = document.createElement("span");
    (run.tags || []).slice().sort().forEach(function (t) {
      var tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = t;
      tags.appendChild(tag);
      tags.appendChild(document.createTextNode(" "));
    });
    cell(tr, tags);
    return tr;
  }

  // The table with this id, made from its empty-page placeholder if need be.
  function ensureTable(id, headers) {
    var table = document.getElementById(id);
    if (table && table.tagName !== "TABLE") {
      var fresh = document.createElement("table");
      fresh.id = id;
      var row = fresh.createTHead().insertRow();
      headers.forEach(function (h) {
        var th = document.createElement("th");
        th.textContent = h;
        row.appendChild(th);
      });
      fresh.appendChild(document.createElement("tbody"));
      table.replaceWith(fresh);
      table = fresh;
    }
    return table;
  }

  function applyRun(run, created) {
    var selector = '[data-run="' + CSS.escape(run.pathspec) + '"]';
    if (created && body.hasAttribute("data-prepend") && !document.querySelector(selector)) {
      var runs = ensureTable("runs", ["run", "state", "created", "started", "finished",
        "duration", "user", "tags"]);
      var tbody = runs && runs.querySelector("tbody");
      if (tbody) tbody.insertBefore(runRow(run), tbody.firstChild);
    }
    document.querySelectorAll(selector).forEach(function (scope) { fields(scope, run); });
    document.querySelectorAll(selector + " .state")
      .forEach(function (el) { if (!el.closest("#steps")) setState(el, run.state); });
    if (!document.querySelector("section" + selector)) return;
    var timeline = document.getElementById("timeline");
    if (timeline) {
      timeline.setAttribute("data-start", run.started_at || run.created_at);
      timeline.setAttribute("data-end", run.finished_at || "");
      relayout(timeline);
    }
    var table = ensureTable("steps", ["step", "status", "progress", "tasks by state"]);
    if (!table) return;
    var steps = table.querySelector("tbody");
    steps.replaceChildren.apply(steps, run.steps.map(stepRow));
  }

  // Lays the timeline's bars out along the run's time, from their data-from/data-to
  // (the same rule as the server's _timeline: running tasks reach the present).
  function relayout(timeline) {
    var now = Date.now();
    var start = Date.parse(timeline.getAttribute("data-start"));
    var runEnd = timeline.getAttribute("data-end");
    var end = runEnd ? Date.parse(runEnd) : now;
    var bars = Array.prototype.slice.call(timeline.querySelectorAll(".bar"));
    function times(bar) {
      var from = Date.parse(bar.getAttribute("data-from"));
      var to = bar.getAttribute("data-to");
      return [from, to ? Date.parse(to) : (bar.getAttribute("data-started") ? end : from)];
    }
    bars.forEach(function (bar) { end = Math.max(end, times(bar)[1]); });
    var span = Math.max(end - start, 1);
    function at(t) { return Math.min(Math.max((t - start) / span * 100, 0), 100); }
    bars.forEach(function (bar) {
      var t = times(bar);
      var left = at(t[0]);
      var width = bar.getAttribute("data-started") ? Math.max(at(t[1]) - left, 0.5) : 0.5;
      bar.style.left = left.toFixed(2) + "%";
      bar.style.width = Math.min(width, 100 - left).toFixed(2) + "%";
    });
    var labels = timeline.querySelectorAll(".scale span");
    if (labels.length === 2) {
      labels[0].textContent = when(new Date(start).toISOString());
      labels[1].textContent = when(new Date(end).toISOString());
    }
  }

  // The bar of a task, with a new lane if the timeline has none yet (at most LANES).
  var LANES = 1000;
  function taskBar(timeline, pathspec) {
    var bar = timeline.querySelector('[data-task="' + CSS.escape(pathspec) + '"]');
    if (bar || timeline.querySelectorAll(".lane").length >= LANES) return bar;
    var empty = timeline.querySelector(".empty");
    if (empty) empty.remove();
    var parts = pathspec.split("/");
    var div = document.createElement("div");
    div.className = "lane";
    var a = document.createElement("a");
    a.className = "who";
    a.href = "/tasks/" + parts.map(encodeURIComponent).join("/");
    a.textContent = parts[2] + "/" + parts[3];
    var track = document.createElement("div");
    track.className = "track";
    bar = document.createElement("div");
    bar.setAttribute("data-task", pathspec);
    track.appendChild(bar);
    div.appendChild(a);
    div.appendChild(track);
    timeline.insertBefore(div, timeline.querySelector(".scale"));
    return bar;
  }

  function paint(bar, pathspec, state) {
    bar.className = "bar state-" + state;
    bar.title = pathspec + ": " + state;
  }

  // A task's view (a task page's watch): its bar and the task page's state.
  function applyTask(task) {
    var timeline = document.getElementById("timeline");
    var bar = timeline && taskBar(timeline, task.pathspec);
    if (bar) {
      paint(bar, task.pathspec, task.state);
      bar.setAttribute("data-from", task.started_at || task.created_at);
      bar.setAttribute("data-to", task.finished_at || "");
      bar.setAttribute("data-started", task.started_at ? "1" : "");
      relayout(timeline);
    }
    var page = document.querySelector('[data-task-page="' + CSS.escape(task.pathspec) + '"]');
    var el = document.getElementById("task-state");
    if (page && el) setState(el, task.state);
  }

  // A task's event in a run's watch (which sends the run's view, not the task's): the
  // timeline's bar from the event's time and state.
  var TERMINAL = ["completed", "failed", "cancelled", "crashed"];
  function applyEvent(event) {
    var timeline = document.getElementById("timeline");
    if (!timeline || !/^task\.(created|state_changed)$/.test(event.type)) return;
    var bar = taskBar(timeline, event.pathspec);
    if (!bar) return;
    var state = event.type === "task.created" ? "pending" : event.payload.state;
    paint(bar, event.pathspec, state);
    if (state === "pending") {
      bar.setAttribute("data-from", event.occurred_at);
      bar.setAttribute("data-started", "");
      bar.setAttribute("data-to", "");
    } else if (state === "running") {
      bar.setAttribute("data-from", event.occurred_at);
      bar.setAttribute("data-started", "1");
      bar.setAttribute("data-to", "");
    } else if (TERMINAL.indexOf(state) >= 0) {
      bar.setAttribute("data-to", event.occurred_at);
    }
    relayout(timeline);
  }

  // views: a snapshot's or one change's; created: the change is a run.created (a run
  // the page may not list yet; a snapshot's runs beyond this page are not added).
  function apply(views, created) {
    (views.runs || []).forEach(function (run) { applyRun(run, created); });
    (views.tasks || []).forEach(applyTask);
  }

  // While the run goes on, its running tasks' bars grow with the present.
  setInterval(function () {
    var timeline = document.getElementById("timeline");
    if (timeline && !timeline.getAttribute("data-end")) relayout(timeline);
  }, 2000);

  var path = watched.split("/").map(encodeURIComponent).join("/");
  var source = new EventSource("/api/v1/watch/" + path);
  source.addEventListener("snapshot", function (e) {
    var data = JSON.parse(e.data);
    apply(data, false);
    body.setAttribute("data-sequence", data.sequence);
  });
  source.addEventListener("change", function (e) {
    var data = JSON.parse(e.data);
    data.changes.forEach(function (change) {
      apply(change, change.event.type === "run.created");
      applyEvent(change.event);
    });
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
