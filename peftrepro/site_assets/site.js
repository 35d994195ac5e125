// peftrepro leaderboard: sorting, filters, budgets and the scatter for a task page.
// The page is complete without this script (every row and detail is in the HTML); this only hides
// rows, reorders them and draws. The view's state lives in the URL fragment, so it can be shared:
//   #status=verified,claimed&family=lora&mem=2&adapter=10&sort=-test_accuracy&x=..&y=..&open=lora/default
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const form = document.getElementById("filters");
  const table = document.getElementById("rows");
  const groups = () => [...table.tBodies]; // one <tbody> per row: its figures, then its detail
  const plot = document.getElementById("plot");
  const shown = document.getElementById("shown");
  const byName = new Map(data.rows.map((r) => [r.name, r]));
  const GiB = 2 ** 30, MiB = 2 ** 20;
  const SVG = "http://www.w3.org/2000/svg";
  const allStatuses = [...form.querySelectorAll('input[name="status"]')].map((b) => b.value);

  form.hidden = false;
  document.getElementById("scatter").hidden = false;

  function defaults() {
    return { status: allStatuses, family: "", mem: "", adapter: "", sort: "", x: data.cost, y: data.score, open: "" };
  }

  function readHash() {
    const state = defaults();
    const params = new URLSearchParams(location.hash.slice(1));
    for (const [k, v] of params) {
      if (k === "status") state.status = v ? v.split(",") : [];
      else if (k in state) state[k] = v;
    }
    if (!(state.x in data.metrics)) state.x = data.cost;
    if (!(state.y in data.metrics)) state.y = data.score;
    return state;
  }

  function writeHash(state) {
    const d = defaults();
    const params = new URLSearchParams();
    for (const k of Object.keys(d)) {
      const v = k === "status" ? state.status.join(",") : state[k];
      const dv = k === "status" ? d.status.join(",") : d[k];
      if (v !== dv) params.set(k, v);
    }
    const text = params.toString().replace(/%2C/g, ",").replace(/%2F/g, "/");
    history.replaceState(null, "", text ? "#" + text : location.pathname + location.search);
  }

  function toForm(state) {
    for (const box of form.querySelectorAll('input[name="status"]')) box.checked = state.status.includes(box.value);
    for (const k of ["family", "mem", "adapter", "x", "y"]) form.elements[k].value = state[k];
  }

  function fromForm(state) {
    state.status = [...form.querySelectorAll('input[name="status"]:checked')].map((b) => b.value);
    for (const k of ["family", "mem", "adapter", "x", "y"]) state[k] = form.elements[k].value;
  }

  function mean(row, key) {
    const s = row.stats[key];
    return s && Number.isFinite(s[0]) ? s[0] : null;
  }

  function within(row, key, budget, unit) {
    if (budget === "" || !Number.isFinite(Number(budget))) return true;
    const v = mean(row, key);
    return v !== null && v <= Number(budget) * unit; // a row without the figure cannot show it fits
  }

  function visible(state, row) {
    return (
      state.status.includes(row.status) &&
      (state.family === "" || row.family === state.family) &&
      within(row, "peak_memory_bytes", state.mem, GiB) &&
      within(row, "adapter_bytes", state.adapter, MiB)
    );
  }

  function sortRows(state) {
    const trs = groups();
    const heads = [...table.tHead.rows[0].cells];
    heads.forEach((th) => th.setAttribute("aria-sort", "none"));
    if (!state.sort) return;
    const desc = state.sort.startsWith("-");
    const key = desc ? state.sort.slice(1) : state.sort;
    const col = heads.findIndex((th) => th.querySelector("button").dataset.sort === key);
    if (col < 0) return;
    const numeric = heads[col].querySelector("button").dataset.kind === "num";
    heads[col].setAttribute("aria-sort", desc ? "descending" : "ascending");
    const value = (g) => g.rows[0].cells[col].dataset.v;
    trs.sort((a, b) => {
      const va = value(a), vb = value(b);
      if (va === "" || vb === "") return (va === "") - (vb === ""); // rows without the figure last
      const c = numeric ? Number(va) - Number(vb) : va.localeCompare(vb);
      return desc ? -c : c;
    });
    trs.forEach((g) => table.appendChild(g));
  }

  // Pareto front of the shown rows on (x, y), each axis better in its metric's direction; as on the
  // Markdown page, only verified and claimed rows are candidates (published figures were not re-run).
  function front(rows, x, y) {
    const sign = (k) => (data.metrics[k].direction === "lower" ? -1 : 1);
    const candidates = rows.filter((r) => data.on_front.includes(r.status));
    const pts = candidates.map((r) => [r, sign(x) * mean(r, x), sign(y) * mean(r, y)]);
    return new Set(
      pts
        .filter(([, a, b]) => !pts.some(([, c, d]) => c >= a && d >= b && (c > a || d > b)))
        .map(([r]) => r.name)
    );
  }

  function fmt(key, v) {
    if (v === null) return "–";
    if (key.endsWith("_bytes")) return v >= GiB ? (v / GiB).toFixed(2) + " GiB" : (v / MiB).toFixed(2) + " MiB";
    if (key === "trainable_params") return Math.round(v).toLocaleString("en");
    if (key === "train_seconds") return v.toFixed(0) + " s";
    return v.toFixed(3);
  }

  function scale(values, lo, hi) {
    const pos = values.filter((v) => v > 0);
    const log = pos.length === values.length && pos.length > 1 && Math.max(...pos) / Math.min(...pos) > 100;
    const f = log ? Math.log10 : (v) => v;
    let a = Math.min(...values.map(f)), b = Math.max(...values.map(f));
    if (a === b) { a -= 1; b += 1; }
    const pad = (b - a) * 0.05;
    const at = (v) => lo + ((f(v) - a + pad) / (b - a + 2 * pad)) * (hi - lo);
    const ticks = [];
    if (log) for (let e = Math.ceil(a); e <= Math.floor(b); e++) ticks.push(10 ** e);
    else for (let i = 0; i <= 4; i++) ticks.push(a + ((b - a) * i) / 4);
    return { log, at, ticks };
  }

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function draw(state, rows) {
    const W = 720, H = 400, L = 80, B = 44;
    plot.setAttribute("viewBox", `0 0 ${W} ${H}`);
    plot.replaceChildren();
    const { x, y } = state;
    const pts = rows.filter((r) => mean(r, x) !== null && mean(r, y) !== null);
    const onFront = front(pts, x, y);
    const label = (k) => data.metrics[k].label + (data.metrics[k].direction === "lower" ? " ↓" : " ↑");
    el("text", { x: W / 2, y: H - 6, "text-anchor": "middle" }, plot).textContent = label(x);
    el("text", { x: 14, y: H / 2, transform: `rotate(-90 14 ${H / 2})`, "text-anchor": "middle" }, plot).textContent = label(y);
    if (!pts.length) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, plot).textContent = "no shown row has both figures";
      return onFront;
    }
    const band = (r) => {
      const m = mean(r, y), s = r.stats[y];
      if (y === data.score && r.interval) return r.interval;
      return s && s[1] !== null ? [m - s[1], m + s[1]] : [m, m];
    };
    const sx = scale(pts.map((r) => mean(r, x)), L, W - 90); // room for the last labels
    const sy = scale(pts.flatMap((r) => band(r)), H - B, 10);
    el("line", { x1: L, y1: H - B, x2: W - 10, y2: H - B, class: "axis" }, plot);
    el("line", { x1: L, y1: 10, x2: L, y2: H - B, class: "axis" }, plot);
    for (const t of sx.ticks) {
      el("line", { x1: sx.at(t), x2: sx.at(t), y1: H - B, y2: H - B + 4, class: "axis" }, plot);
      el("text", { x: sx.at(t), y: H - B + 16, "text-anchor": "middle" }, plot).textContent = fmt(x, t);
    }
    for (const t of sy.ticks) {
      el("line", { x1: L - 4, x2: L, y1: sy.at(t), y2: sy.at(t), class: "axis" }, plot);
      el("text", { x: L - 6, y: sy.at(t) + 4, "text-anchor": "end" }, plot).textContent = fmt(y, t);
    }
    const line = pts.filter((r) => onFront.has(r.name)).sort((a, b) => mean(a, x) - mean(b, x));
    el("polyline", { points: line.map((r) => `${sx.at(mean(r, x))},${sy.at(mean(r, y))}`).join(" "), class: "front-line" }, plot);
    for (const r of pts) {
      const cx = sx.at(mean(r, x)), [lo, hi] = band(r);
      el("line", { x1: cx, x2: cx, y1: sy.at(lo), y2: sy.at(hi), class: "bar" }, plot);
      const tier = r.tier === null ? "none" : r.tier === 1 ? "1" : "2";
      const dot = el("circle", {
        cx, cy: sy.at(mean(r, y)), r: 5, tabindex: 0, "data-name": r.name,
        class: `point tier-${tier} status-${r.status}` + (onFront.has(r.name) ? " on-front" : ""),
      }, plot);
      const text = `${r.name} (${r.status.replace("_", " ")}; tier ${r.tier ?? "–"}): ` +
        `${data.metrics[x].label} ${fmt(x, mean(r, x))}, ${data.metrics[y].label} ${fmt(y, mean(r, y))}`;
      dot.setAttribute("aria-label", text);
      el("title", {}, dot).textContent = text;
      if (pts.length <= 30) el("text", { x: cx + 7, y: sy.at(mean(r, y)) - 6, class: "name" }, plot).textContent = r.name;
      dot.addEventListener("click", () => openDetail(r.name, true));
      dot.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(r.name, true); });
    }
    return onFront;
  }

  function openDetail(name, focus) {
    const d = document.getElementById("detail-" + name);
    if (!d) return;
    d.open = true;
    if (focus) { d.scrollIntoView({ block: "nearest" }); d.querySelector("summary").focus(); }
  }

  let state = readHash();

  function render() {
    const rows = data.rows.filter((r) => visible(state, r));
    const names = new Set(rows.map((r) => r.name));
    for (const g of groups()) g.hidden = !names.has(g.dataset.name);
    sortRows(state);
    const onFront = draw(state, rows);
    for (const g of groups()) g.classList.toggle("shown-front", onFront.has(g.dataset.name));
    shown.textContent = `${rows.length} of ${data.rows.length} rows shown; ${onFront.size} on their front`;
    if (state.open && byName.has(state.open)) openDetail(state.open, false);
  }

  form.addEventListener("input", () => { fromForm(state); writeHash(state); render(); });
  form.addEventListener("submit", (e) => e.preventDefault());
  for (const button of table.tHead.querySelectorAll("button")) {
    button.addEventListener("click", () => {
      const key = button.dataset.sort;
      const [one, two] = button.dataset.first === "desc" ? ["-" + key, key] : [key, "-" + key];
      state.sort = state.sort === one ? two : state.sort === two ? "" : one;
      writeHash(state);
      render();
    });
  }
  for (const d of table.querySelectorAll("tbody.group > tr.detail-row details")) {
    d.addEventListener("toggle", () => {
      const name = d.id.slice("detail-".length);
      if (d.open) state.open = name;
      else if (state.open === name) state.open = "";
      writeHash(state);
    });
  }
  window.addEventListener("hashchange", () => { state = readHash(); toForm(state); render(); });
  toForm(state);
  render();
})();
