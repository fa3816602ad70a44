// The threshold slider and the figures and charts that follow it, answered in the browser from every
// position's figures sent once, so a key press costs no server run and no chart redraw (only a
// marker moves). The position reaches the server (the saved threshold, "what flips") once the
// slider has rested for REST_MS.
// All text comes in `data` from the server and is set with textContent, never parsed as HTML.

const REST_MS = 200;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
// Chart geometry in viewBox units; the SVG scales to its column's width. Above the plot, from the top: the
// title, the legend, then a band of its own for the marker's words (MARKER_WORDS_Y), so nothing the plot draws
// (the curve, the best point) is ever under them.
const W = 400, H = 260, LEFT = 46, RIGHT = 12, TOP = 60, BOTTOM = 40;
const MARKER_WORDS_Y = TOP - 8;

function shape(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceStep(span, ticks) {
  const raw = span / ticks;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((step) => step >= raw);
}

function tickValues(low, high, ticks) {
  const step = niceStep(high - low || 1, ticks);
  const values = [];
  for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) values.push(value);
  return values;
}

function formatted(value, format) {
  return format === "percent" ? `${Math.round(value * 100)}%` : value.toFixed(2);
}

// One chart: histogram bars and steps and/or a curve over the slider's positions, with a marker at
// the slider's position that move(at) places.
function buildChart(spec, data) {
  const edges = [spec.bars?.edges, spec.steps?.edges].filter(Boolean).flat();
  const xLow = Math.min(data.low, ...edges), xHigh = Math.max(data.high, ...edges);
  const heights = [spec.bars?.heights ?? [], spec.steps?.heights ?? [], spec.line ?? [], spec.band?.high ?? []].flat();
  const yHigh = spec.y_max ?? (Math.max(...heights.filter(Number.isFinite), 1e-9) * 1.08);
  const x = (value) => LEFT + ((value - xLow) / (xHigh - xLow || 1)) * (W - LEFT - RIGHT);
  const y = (value) => H - BOTTOM - (value / yHigh) * (H - TOP - BOTTOM);
  const root = shape("svg", { viewBox: `0 0 ${W} ${H}`, class: "rl-chart", role: "img", "aria-label": spec.title });
  root.append(shape("text", { x: LEFT, y: 16, class: "rl-chart-title" }, spec.title));

  for (const value of tickValues(0, yHigh, 4)) {
    root.append(shape("line", { x1: LEFT, x2: W - RIGHT, y1: y(value), y2: y(value), class: "rl-grid" }));
    root.append(shape("text", { x: LEFT - 6, y: y(value) + 4, class: "rl-tick", "text-anchor": "end" }, formatted(value, spec.y_format)));
  }
  for (const value of tickValues(xLow, xHigh, 6)) {
    root.append(shape("text", { x: x(value), y: H - BOTTOM + 16, class: "rl-tick", "text-anchor": "middle" }, value.toFixed(2)));
  }
  root.append(shape("line", { x1: LEFT, x2: W - RIGHT, y1: y(0), y2: y(0), class: "rl-axis" }));
  root.append(shape("text", { x: (LEFT + W - RIGHT) / 2, y: H - 6, class: "rl-axis-title", "text-anchor": "middle" }, spec.x_title));
  root.append(shape("text", { x: 11, y: (TOP + H - BOTTOM) / 2, class: "rl-axis-title", "text-anchor": "middle",
    transform: `rotate(-90 11 ${(TOP + H - BOTTOM) / 2})` }, spec.y_title));

  const legend = [];
  if (spec.bars) {
    const { edges: barEdges, heights: barHeights } = spec.bars;
    barHeights.forEach((height, bin) => {
      root.append(shape("rect", { x: x(barEdges[bin]), width: Math.max(x(barEdges[bin + 1]) - x(barEdges[bin]), 0.5),
        y: y(height), height: y(0) - y(height), class: "rl-bars" }));
    });
    legend.push(["rl-bars", spec.bars.name]);
  }
  if (spec.steps) {
    const { edges: stepEdges, heights: stepHeights } = spec.steps;
    let path = `M${x(stepEdges[0])},${y(0)}`;
    stepHeights.forEach((height, bin) => { path += ` V${y(height)} H${x(stepEdges[bin + 1])}`; });
    root.append(shape("path", { d: `${path} V${y(0)}`, class: "rl-steps" }));
    legend.push(["rl-steps", spec.steps.name]);
  }
  if (spec.band) {
    // Low ends left to right, then high ends back: one closed shape under the curve.
    const at = (values) => values.map((value, step) => `${x(Number(data.thresholds[step]))},${y(value)}`);
    const outline = [...at(spec.band.low), ...at(spec.band.high).reverse()];
    root.append(shape("path", { d: `M${outline.join(" L")} Z`, class: "rl-band" }));
    legend.push(["rl-band", spec.band.name]);
  }
  if (spec.line) {
    const points = spec.line.map((value, at) => `${x(Number(data.thresholds[at]))},${y(value)}`);
    root.append(shape("path", { d: `M${points.join(" L")}`, class: "rl-line" }));
  }
  // The legend sits under the title, side by side, clear of the plot and its marker.
  if (spec.best) legend.push(["rl-best", spec.best.label]);
  legend.forEach(([className, name], item) => {
    const left = LEFT + item * (W - LEFT - RIGHT) / 2;
    root.append(shape("rect", { x: left, y: 25, width: 12, height: 8, class: className }));
    root.append(shape("text", { x: left + 16, y: 33, class: "rl-tick" }, name));
  });
  // The best point's words go in the legend, where the moving marker's words never cover them.
  if (spec.best) root.append(shape("circle", { cx: x(spec.best.x), cy: y(spec.best.y), r: 5, class: "rl-best" }));

  const marker = shape("line", { y1: TOP, y2: y(0), class: "rl-marker" });
  const dot = spec.line ? shape("circle", { r: 4, class: "rl-dot" }) : null;
  const caption = shape("text", { y: MARKER_WORDS_Y, class: "rl-marker-label" });
  root.append(marker, caption);
  if (dot) root.append(dot);
  const move = (at) => {
    const left = x(Number(data.thresholds[at]));
    marker.setAttribute("x1", left);
    marker.setAttribute("x2", left);
    caption.textContent = spec.marker_labels[at];
    labelled(caption, left);
    if (dot) {
      dot.setAttribute("cx", left);
      dot.setAttribute("cy", y(spec.line[at]));
    }
  };
  return { root, move };
}

// A label beside x, on the side of the chart with room for it, so it is never cut at an edge.
function labelled(text, left) {
  const onRight = left < (LEFT + W - RIGHT) / 2;
  text.setAttribute("x", onRight ? left + 6 : left - 6);
  text.setAttribute("text-anchor", onRight ? "start" : "end");
  return text;
}

function build(root, data) {
  // The root also holds the component's <style>: only the panel is replaced.
  root.querySelector(".rl-live")?.remove();
  const view = { data, origin: null, rested: null, timer: null, send: null, cards: [] };
  const panel = element("div", "rl-live");

  const head = element("div", "rl-slider-head");
  head.append(element("span", "rl-slider-label", data.label));
  view.shown = element("span", "rl-slider-value");
  head.append(view.shown);
  panel.append(head);
  view.input = element("input", "rl-slider");
  Object.assign(view.input, { type: "range", min: data.low, max: data.high, step: 10 ** -data.decimals });
  view.input.setAttribute("aria-label", data.label);
  const ends = element("div", "rl-slider-ends");
  ends.append(element("span", "", data.low.toFixed(data.decimals)), element("span", "", data.high.toFixed(data.decimals)));
  panel.append(view.input, ends);

  for (const row of data.rows) {
    const line = element("div", "rl-row");
    for (const metric of row) {
      const card = element("div", "rl-metric");
      if (metric.help) card.title = metric.help;
      const value = element("div", "rl-value");
      const delta = element("div", "rl-delta");
      card.append(element("div", "rl-label", metric.label), value, delta);
      line.append(card);
      view.cards.push({ metric, value, delta });
    }
    panel.append(line);
  }

  const table = element("table", "rl-ranks");
  const header = element("tr");
  header.append(element("th", "", data.ranks.label), element("th", "", data.ranks.counted));
  table.append(header);
  view.rankCells = data.ranks.names.map((name) => {
    const row = element("tr");
    const count = element("td");
    row.append(element("td", "", name), count);
    table.append(row);
    return count;
  });
  panel.append(table);
  const charts = element("div", "rl-charts");
  view.charts = data.charts.map((spec) => buildChart(spec, data));
  charts.append(...view.charts.map((chart) => chart.root));
  panel.append(charts);
  root.append(panel);

  view.input.addEventListener("input", () => {
    show(view);
    clearTimeout(view.timer);
    view.timer = setTimeout(() => rest(view), REST_MS);
  });
  // Leaving the slider (a click on a page link, a box) is a rest: the server gets the position first.
  view.input.addEventListener("blur", () => {
    if (view.timer === null) return;
    clearTimeout(view.timer);
    rest(view);
  });
  return view;
}

function position(view) {
  const { data } = view;
  const index = Math.round((Number(view.input.value) - data.low) * 10 ** data.decimals);
  return Math.min(Math.max(index, 0), data.thresholds.length - 1);
}

function show(view) {
  const at = position(view);
  const rested = view.rested === null ? at : view.rested;
  view.shown.textContent = view.data.thresholds[at];
  view.input.setAttribute("aria-valuetext", view.data.thresholds[at]);
  for (const { metric, value, delta } of view.cards) {
    value.textContent = metric.shown[at];
    if (metric.counts) {
      const change = metric.counts[at] - metric.counts[rested];
      delta.textContent = change ? `${change > 0 ? "↑ +" : "↓ −"}${Math.abs(change).toLocaleString("en-US")}` : "";
    }
  }
  view.data.ranks.counts[at].forEach((count, rank) => {
    view.rankCells[rank].textContent = count.toLocaleString("en-US");
  });
  for (const chart of view.charts) chart.move(at);
}

function rest(view) {
  view.timer = null;
  const at = position(view);
  if (at === view.rested) return;
  view.rested = at;
  view.send("threshold", Number(view.data.thresholds[at]));
}

export default function ({ data, setStateValue, parentElement }) {
  let view = parentElement.liveThreshold;
  if (!view || view.data.key !== data.key) {
    if (view) clearTimeout(view.timer);
    view = build(parentElement, data);
    parentElement.liveThreshold = view;
  }
  view.send = setStateValue;
  // The server moves the slider only when its origin changes (first show, a box, another tab): its
  // echo of a position sent from here must not pull back a slider the user has moved on since.
  if (data.origin !== view.origin) {
    view.origin = data.origin;
    view.input.value = data.value;
    view.rested = position(view);
    show(view);
  }
}
