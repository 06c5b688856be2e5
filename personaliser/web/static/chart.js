// A hand-drawn SVG line chart of the line's output: cards per hour (filled) and cards passed
// (a line on its own scale), one sample a second.  No library: a few SVG elements redrawn.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 640, H = 220, L = 64, R = 40, T = 12, B = 26;

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function nice(max) {
    if (max <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(max)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= max) return m * p;
    return 10 * p;
  }

  function draw(svg, samples) {
    // Keep <title> and <desc> (the accessible name and description); redraw the rest.
    for (const node of Array.from(svg.childNodes)) {
      if (node.nodeName !== "title" && node.nodeName !== "desc") svg.removeChild(node);
    }
    const desc = svg.querySelector("desc");
    const data = samples.slice(-300);
    const plotW = W - L - R, plotH = H - T - B;
    svg.appendChild(el("rect", { x: L, y: T, width: plotW, height: plotH, class: "plot" }));
    if (data.length < 2) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "Waiting for the line…"));
      desc.textContent = "No data yet.";
      return;
    }
    const t0 = data[0].t, t1 = data[data.length - 1].t;
    const span = Math.max(t1 - t0, 1);
    const rateMax = nice(Math.max(...data.map((s) => s.cards_per_hour)));
    const passedMax = nice(Math.max(...data.map((s) => s.passed)));
    const x = (t) => L + ((t - t0) / span) * plotW;
    const yRate = (v) => T + plotH - (v / rateMax) * plotH;
    const yPassed = (v) => T + plotH - (v / passedMax) * plotH;
    for (let i = 0; i <= 4; i++) {
      const y = T + (plotH * i) / 4;
      svg.appendChild(el("line", { x1: L, x2: L + plotW, y1: y, y2: y, class: "grid" }));
      svg.appendChild(el("text", { x: L - 6, y: y + 4, "text-anchor": "end", class: "axis" },
        Math.round(rateMax * (1 - i / 4)).toLocaleString()));
      svg.appendChild(el("text", { x: L + plotW + 6, y: y + 4, class: "axis" },
        Math.round(passedMax * (1 - i / 4)).toLocaleString()));
    }
    const ratePts = data.map((s) => `${x(s.t).toFixed(1)},${yRate(s.cards_per_hour).toFixed(1)}`);
    svg.appendChild(el("polygon", {
      points: `${L},${T + plotH} ${ratePts.join(" ")} ${x(t1).toFixed(1)},${T + plotH}`, class: "rate-area",
    }));
    svg.appendChild(el("polyline", { points: ratePts.join(" "), class: "rate" }));
    svg.appendChild(el("polyline", {
      points: data.map((s) => `${x(s.t).toFixed(1)},${yPassed(s.passed).toFixed(1)}`).join(" "), class: "passed",
    }));
    svg.appendChild(el("text", { x: L, y: H - 6, class: "axis" }, `${Math.round(t0)} s`));
    svg.appendChild(el("text", { x: L + plotW, y: H - 6, "text-anchor": "end", class: "axis" }, `${Math.round(t1)} s`));
    const last = data[data.length - 1];
    desc.textContent = `Over ${Math.round(span)} seconds: now ${Math.round(last.cards_per_hour)} cards per hour, ` +
      `${last.passed} cards passed, ${last.spoiled} spoiled.`;
  }

  window.persoChart = { draw };
})();
