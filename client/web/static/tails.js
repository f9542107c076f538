// runstate's task page, live: its metric charts and its log tail follow the gateway's event
// streams named in their data-follow attributes (the server rendered both complete; this
// only adds what comes next). Each message's id is a position, so EventSource's reconnect
// (with Last-Event-ID) resumes right after the last row or line it got.
"use strict";
(function () {
  if (!window.EventSource) return;
  var SVG = "http://www.w3.org/2000/svg";
  // the same geometry as client/web/_charts.py's chart_svg
  var WIDTH = 320, HEIGHT = 120, LEFT = 52, RIGHT = 8, TOP = 8, BOTTOM = 18;

  function label(value) { return String(Number(value.toPrecision(4))); }

  // Draws points ([step, value], steps increasing) into a chart's svg, as chart_svg does.
  function draw(svg, points) {
    var innerW = WIDTH - LEFT - RIGHT, innerH = HEIGHT - TOP - BOTTOM;
    var steps = points.map(function (p) { return p[0]; });
    var values = points.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, steps), x1 = Math.max.apply(null, steps);
    var y0 = Math.min.apply(null, values), y1 = Math.max.apply(null, values);
    function x(step) { return x1 > x0 ? LEFT + (step - x0) / (x1 - x0) * innerW : LEFT + innerW / 2; }
    function y(value) { return y1 > y0 ? TOP + (y1 - value) / (y1 - y0) * innerH : TOP + innerH / 2; }
    svg.querySelector(".line").setAttribute("points", points.map(function (p) {
      return x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1);
    }).join(" "));
    var last = points[points.length - 1];
    svg.querySelector(".dot").setAttribute("cx", x(last[0]).toFixed(1));
    svg.querySelector(".dot").setAttribute("cy", y(last[1]).toFixed(1));
    svg.querySelector(".y-max").textContent = label(y1);
    svg.querySelector(".y-min").textContent = label(y0);
    svg.querySelector(".x-min").textContent = String(x0);
    svg.querySelector(".x-max").textContent = String(x1);
  }

  // A new key's figure, the same markup as _charts.py's _figure.
  function figure(charts, key) {
    var fig = document.createElement("figure");
    fig.className = "metric";
    fig.setAttribute("data-key", key);
    fig.setAttribute("data-points", "[]");
    var caption = document.createElement("figcaption");
    var name = document.createElement("span");
    name.className = "key";
    name.textContent = key;
    var last = document.createElement("span");
    last.className = "last";
    caption.appendChild(name);
    caption.appendChild(document.createTextNode(" "));
    caption.appendChild(last);
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "chart");
    svg.setAttribute("viewBox", "0 0 " + WIDTH + " " + HEIGHT);
    svg.setAttribute("role", "img");
    var axis = document.createElementNS(SVG, "path");
    axis.setAttribute("class", "axis");
    axis.setAttribute("d", "M" + LEFT + " " + TOP + "V" + (HEIGHT - BOTTOM) + "H" + (WIDTH - RIGHT));
    svg.appendChild(axis);
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", "line");
    svg.appendChild(line);
    var dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("class", "dot");
    dot.setAttribute("r", "2.5");
    svg.appendChild(dot);
    [["y-max", LEFT - 4, TOP + 8], ["y-min", LEFT - 4, HEIGHT - BOTTOM],
      ["x-min", LEFT, HEIGHT - 4], ["x-max", WIDTH - RIGHT, HEIGHT - 4]].forEach(function (t) {
      var text = document.createElementNS(SVG, "text");
      text.setAttribute("class", t[0]);
      text.setAttribute("x", t[1]);
      text.setAttribute("y", t[2]);
      svg.appendChild(text);
    });
    fig.appendChild(caption);
    fig.appendChild(svg);
    // keys in name order, as the server lays them out
    var after = Array.prototype.find.call(charts.querySelectorAll("figure.metric"),
      function (f) { return f.getAttribute("data-key") > key; });
    charts.insertBefore(fig, after || null);
    return fig;
  }

  // Halves a series that grew past its limit, keeping each pair's extreme and the ends,
  // so a spike stays visible (the server's sampling keeps minima and maxima too).
  function thin(points) {
    var kept = [points[0]];
    for (var i = 1; i < points.length - 1; i += 2) {
      var a = points[i], b = points[i + 1] || a;
      var prev = kept[kept.length - 1][1];
      kept.push(Math.abs(a[1] - prev) >= Math.abs(b[1] - prev) ? a : b);
    }
    kept.push(points[points.length - 1]);
    return kept;
  }

  function followCharts(charts) {
    var limit = Number(charts.getAttribute("data-limit")) || 1000;
    var series = {};
    var dirty = {};
    var scheduled = false;
    charts.querySelectorAll("figure.metric").forEach(function (fig) {
      series[fig.getAttribute("data-key")] = JSON.parse(fig.getAttribute("data-points"));
    });

    function redraw() {
      scheduled = false;
      Object.keys(dirty).forEach(function (key) {
        var fig = charts.querySelector('figure[data-key="' + CSS.escape(key) + '"]');
        if (fig) draw(fig.querySelector("svg"), series[key]);
      });
      dirty = {};
    }

    // One point per step: a row the charts already hold (read twice around the hand-over
    // from history to live rows) replaces it.
    function add(key, step, value, shown) {
      var fig = charts.querySelector('figure[data-key="' + CSS.escape(key) + '"]');
      if (!fig) {
        fig = figure(charts, key);
        series[key] = [];
      }
      var points = series[key];
      var i = points.length;
      while (i > 0 && points[i - 1][0] > step) i--;
      if (i > 0 && points[i - 1][0] === step) points[i - 1] = [step, value];
      else points.splice(i, 0, [step, value]);
      if (points.length > limit) series[key] = thin(points);
      fig.querySelector(".last").textContent = shown;
      dirty[key] = true;
      if (!scheduled) { scheduled = true; window.requestAnimationFrame(redraw); }
    }

    // The latest values' table (as the server's pairs_table: values as JSON).
    var latest = document.querySelector("#latest table tbody");
    function setLatest(key, value) {
      if (!latest) return;
      var row = Array.prototype.find.call(latest.rows,
        function (tr) { return tr.cells[0].textContent === key; });
      if (!row) {
        row = latest.insertRow();
        var th = document.createElement("th");
        th.textContent = key;
        row.appendChild(th);
        row.insertCell().appendChild(document.createElement("code"));
      }
      var text = typeof value === "object" ? value.$f : JSON.stringify(value);
      row.querySelector("code").textContent = text;
    }

    var source = new EventSource(charts.getAttribute("data-follow"));
    source.addEventListener("row", function (e) {
      var row = JSON.parse(e.data).row;
      Object.keys(row).forEach(function (key) {
        if (key.charAt(0) === "_") return;
        setLatest(key, row[key]);
        var value = row[key];
        if (typeof value === "boolean") value = value ? 1 : 0;
        if (typeof value !== "number" || !isFinite(value)) return;
        add(key, row._step, value, String(row[key]));
      });
    });
    source.addEventListener("error", function (e) { if (e.data) source.close(); });
  }

  function followLog(pre) {
    var limit = Number(pre.getAttribute("data-limit")) || 1000;
    var source = new EventSource(pre.getAttribute("data-follow"));
    source.addEventListener("line", function (e) {
      var line = JSON.parse(e.data);
      // keep reading the newest lines unless the reader scrolled up
      var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var span = document.createElement("span");
      span.className = "line " + line.stream;
      span.textContent = line.text;
      pre.appendChild(span);
      while (pre.childElementCount > limit) pre.removeChild(pre.firstElementChild);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    source.addEventListener("error", function (e) { if (e.data) source.close(); });
  }

  var charts = document.getElementById("charts");
  if (charts && charts.getAttribute("data-follow")) followCharts(charts);
  var log = document.getElementById("log-tail");
  if (log && log.getAttribute("data-follow")) {
    log.scrollTop = log.scrollHeight;
    followLog(log);
  }
})();
