// peakdesk console: the overview's charts (uPlot), fed by /console/overview/series.
(function () {
  "use strict";
  var charts = {};
  var colors = ["#dc2626", "#2563eb", "#16a34a", "#d97706", "#7c3aed"];

  function draw(el, data, series) {
    var width = el.clientWidth || 600;
    var opts = {
      width: width, height: 170,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [{ stroke: "#6b7280", grid: { stroke: "#eef0f3" } },
             { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, size: 50 }],
      series: [{}].concat(series.map(function (s, i) {
        return { label: s, stroke: colors[i % colors.length], width: 1.5, points: { show: false } };
      }))
    };
    if (charts[el.id]) { charts[el.id].destroy(); }
    el.innerHTML = "";
    charts[el.id] = new uPlot(opts, data, el);
  }

  function load() {
    var root = document.getElementById("charts");
    if (!root || typeof uPlot === "undefined") { return; }
    var range = root.getAttribute("data-range") || "1h";
    fetch("/console/overview/series?range=" + encodeURIComponent(range), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d) { return; }
        root.querySelectorAll("[data-chart]").forEach(function (el) {
          var c = d.charts[el.getAttribute("data-chart")];
          if (c) { draw(el, [d.t].concat(c.values), c.labels); }
        });
      })
      .catch(function () {});
  }

  document.addEventListener("click", function (e) {
    var b = e.target.closest("[data-range-to]");
    if (!b) { return; }
    var root = document.getElementById("charts");
    root.setAttribute("data-range", b.getAttribute("data-range-to"));
    document.querySelectorAll("[data-range-to]").forEach(function (x) { x.classList.toggle("primary", x === b); });
    load();
  });
  document.addEventListener("DOMContentLoaded", function () {
    load();
    setInterval(load, 15000);
  });
})();
