// peakdesk console: the overview's charts (uPlot), fed by /console/overview/series.
(function () {
  "use strict";
  var charts = {};
  var colors = ["#dc2626", "#2563eb", "#16a34a", "#d97706", "#7c3aed"];
  // Every time on the console is China Standard Time, the shops' day.
  var hm = new Intl.DateTimeFormat("en-GB", { timeZone: "Asia/Shanghai", hour: "2-digit", minute: "2-digit", hour12: false });
  var full = new Intl.DateTimeFormat("sv-SE", { timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

  function draw(el, data, series, timeLabel) {
    var width = el.clientWidth || 600;
    var opts = {
      width: width, height: 150,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [{ stroke: "#6b7280", grid: { stroke: "#eef0f3" },
               values: function (u, splits) { return splits.map(function (v) { return hm.format(new Date(v * 1000)); }); } },
             { stroke: "#6b7280", grid: { stroke: "#eef0f3" }, size: 50 }],
      series: [{ label: timeLabel, value: function (u, v) { return v == null ? "--" : full.format(new Date(v * 1000)); } }].concat(series.map(function (s, i) {
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
    fetch("/console/overview/series?range=" + encodeURIComponent(range), { credentials: "same-origin", headers: { "X-Console-Poll": "1" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d) { return; }
        root.querySelectorAll("[data-chart]").forEach(function (el) {
          var c = d.charts[el.getAttribute("data-chart")];
          if (c) { draw(el, [d.t].concat(c.values), c.labels, root.getAttribute("data-time-label") || "Time"); }
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
