// The threshold slider and the figures that follow it, answered in the browser from every position's
// figures sent once, so a key press costs no server run. The position reaches the server (the
// saved threshold, charts, "what flips") once the slider has rested for REST_MS.
// All text comes in `data` from the server and is set with textContent, never parsed as HTML.

const REST_MS = 200;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
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
  Object.assign(view.input, { type: "range", min: data.low, max: data.high, step: data.step });
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
  const index = Math.round((Number(view.input.value) - data.low) / data.step);
  return Math.min(Math.max(index, 0), data.positions - 1);
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
