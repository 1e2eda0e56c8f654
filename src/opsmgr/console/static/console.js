// Draws the agent page's chart with uPlot from the JSON the server put in the page (no inline script: the
// Content-Security-Policy allows scripts from this origin only).
"use strict";
(function () {
  function draw() {
    var holder = document.getElementById("chart");
    var source = document.getElementById("chart-data");
    if (!holder || !source || typeof uPlot === "undefined") { return; }
    var data = JSON.parse(source.textContent);
    var width = Math.max(400, holder.clientWidth - 16);
    var options = {
      width: width, height: 300,
      series: [{}, {label: holder.dataset.title || "value", stroke: "rgb(31, 119, 180)", width: 2,
                    points: {show: true, size: 5, stroke: "rgb(31, 119, 180)", fill: "rgb(31, 119, 180)"}}],
      axes: [{}, {}],
      scales: {x: {time: true}}
    };
    var plot = new uPlot(options, data, holder);
    holder.dataset.renderedPoints = String(data[0].length);
    window.addEventListener("resize", function () {
      plot.setSize({width: Math.max(400, holder.clientWidth - 16), height: 300});
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } else { draw(); }
})();
