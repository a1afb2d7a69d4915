// The flow graph as a small layered SVG, built with createElementNS (no markup strings).
//
// Layout: a node's layer is the longest path to it from a source node over data and stream edges,
// so those all point down; within a layer, nodes are ordered by the mean position of their parents
// (one barycentre pass), which removes most crossings in the small DAGs flows are. A fallback
// stand-in reads the same inputs as its primary, so it usually shares its layer: it is placed right
// beside it and the dashed fallback edge runs sideways. Edges that skip layers bow around the nodes
// in between. Live state is a class on each node: state-running|finished|failed|skipped|cached.

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 132;
const NODE_H = 40;
const GAP_X = 28;
const GAP_Y = 44;
const PAD = 16;
const STATES = ["running", "finished", "failed", "skipped", "cached"];
// Step states that have no colour of their own in the graph.
const ALIAS = { retrying: "running", fallback: "failed" };

/**
 * Draw the flow graph into a container, replacing what was there.
 * @param {Element} container
 * @param {{nodes: {id: string, type: string}[], edges: {source: string, target: string, stream?: boolean, fallback?: boolean}[]}} graph
 */
export function drawGraph(container, graph) {
  container.replaceChildren();
  const nodes = graph?.nodes ?? [];
  const edges = (graph?.edges ?? []).filter((e) => e.source !== e.target);
  if (!nodes.length) return;
  const layer = assignLayers(nodes, edges.filter((e) => !e.fallback));
  const layers = orderLayers(nodes, edges, layer);
  const pos = place(layers);
  const paths = edges.filter((e) => pos.has(e.source) && pos.has(e.target)).map((e) => edgePath(e, pos));
  // The view box spans the nodes and any edge bowed out past them.
  const xs = [...pos.values()].flatMap((p) => [p.x, p.x + NODE_W]).concat(paths.map((p) => Number(p.dataset.reach)));
  const left = Math.min(...xs) - PAD;
  const width = Math.max(...xs) + PAD - left;
  const height = layers.length * (NODE_H + GAP_Y) - GAP_Y + 2 * PAD;

  const svg = svgEl("svg", { viewBox: `${left} 0 ${width} ${height}`, role: "img", class: "flow-graph" });
  svg.setAttribute("aria-label", `Flow graph: ${nodes.length} nodes, ${edges.length} edges`);
  svg.append(arrowMarker(), ...paths, ...nodes.map((node) => nodeBox(node, pos.get(node.id))));
  container.append(svg);
}

/**
 * Show a node's live state; step states without a colour map to the nearest one.
 * @param {Element} container
 * @param {string} nodeId
 * @param {string} state
 */
export function setNodeState(container, nodeId, state) {
  const shown = ALIAS[state] ?? state;
  for (const el of container.querySelectorAll(".node")) {
    if (el.dataset.node !== nodeId) continue;
    for (const s of STATES) el.classList.toggle(`state-${s}`, s === shown);
  }
}

/** Clear every node's state before a new run. */
export function resetGraph(container) {
  for (const el of container.querySelectorAll(".node")) {
    for (const s of STATES) el.classList.remove(`state-${s}`);
  }
}

// Longest path from the sources (Kahn's order). Nodes left in a cycle, which a valid plan never
// has, go one layer below everything else rather than breaking the drawing.
function assignLayers(nodes, edges) {
  const layer = new Map(nodes.map((n) => [n.id, 0]));
  const indegree = new Map(nodes.map((n) => [n.id, 0]));
  for (const e of edges) if (indegree.has(e.target)) indegree.set(e.target, indegree.get(e.target) + 1);
  const queue = nodes.filter((n) => indegree.get(n.id) === 0).map((n) => n.id);
  const seen = new Set();
  while (queue.length) {
    const id = queue.shift();
    seen.add(id);
    for (const e of edges) {
      if (e.source !== id || !layer.has(e.target)) continue;
      layer.set(e.target, Math.max(layer.get(e.target), layer.get(id) + 1));
      indegree.set(e.target, indegree.get(e.target) - 1);
      if (indegree.get(e.target) === 0) queue.push(e.target);
    }
  }
  const deepest = Math.max(0, ...[...seen].map((id) => layer.get(id)));
  for (const n of nodes) if (!seen.has(n.id)) layer.set(n.id, deepest + 1);
  return layer;
}

function orderLayers(nodes, edges, layer) {
  const rows = [];
  for (const n of nodes) {
    const r = layer.get(n.id);
    if (!rows[r]) rows[r] = [];
    rows[r].push(n.id);
  }
  const compact = rows.filter(Boolean);
  const index = new Map();
  const data = edges.filter((e) => !e.fallback);
  compact.forEach((row, r) => {
    if (r > 0) row.sort((a, b) => barycentre(a, data, index) - barycentre(b, data, index));
    besideFallbacks(row, edges);
    row.forEach((id, i) => index.set(id, i - (row.length - 1) / 2));
  });
  return compact;
}

function besideFallbacks(row, edges) {
  for (const e of edges) {
    if (!e.fallback || !row.includes(e.source) || !row.includes(e.target)) continue;
    row.splice(row.indexOf(e.target), 1);
    row.splice(row.indexOf(e.source) + 1, 0, e.target);
  }
}

function barycentre(id, edges, index) {
  const parents = edges.filter((e) => e.target === id && index.has(e.source)).map((e) => index.get(e.source));
  return parents.length ? parents.reduce((a, b) => a + b, 0) / parents.length : 0;
}

function place(layers) {
  const widest = Math.max(...layers.map((row) => row.length));
  const pos = new Map();
  layers.forEach((row, r) => {
    const offset = ((widest - row.length) * (NODE_W + GAP_X)) / 2;
    row.forEach((id, i) => {
      pos.set(id, { x: PAD + offset + i * (NODE_W + GAP_X), y: PAD + r * (NODE_H + GAP_Y) });
    });
  });
  return pos;
}

function edgePath(edge, pos) {
  const classes = ["edge", edge.stream ? "edge-stream" : "", edge.fallback ? "edge-fallback" : ""].filter(Boolean);
  const { d, reach } = curve(edge, pos);
  const path = svgEl("path", { d, class: classes.join(" "), "marker-end": "url(#rf-arrow)" });
  path.dataset.reach = String(reach);
  path.dataset.source = edge.source;
  path.dataset.target = edge.target;
  return path;
}

/** The path of one edge, and the x it reaches furthest out (for the view box). */
function curve(edge, pos) {
  const a = pos.get(edge.source);
  const b = pos.get(edge.target);
  if (a.y === b.y) { // same layer (a fallback beside its primary): side to side
    const right = a.x < b.x;
    const x1 = right ? a.x + NODE_W : a.x;
    const x2 = right ? b.x - 2 : b.x + NODE_W + 2;
    const y = a.y + NODE_H / 2;
    return { d: `M ${x1} ${y} C ${(x1 + x2) / 2} ${y - 10}, ${(x1 + x2) / 2} ${y - 10}, ${x2} ${y}`, reach: x1 };
  }
  const x1 = a.x + NODE_W / 2;
  const y1 = a.y + NODE_H;
  const x2 = b.x + NODE_W / 2;
  const y2 = b.y - 2;
  const bend = Math.max(16, (y2 - y1) / 2);
  const reach = bowReach(pos, a, b, (x1 + x2) / 2);
  if (reach === null) return { d: `M ${x1} ${y1} C ${x1} ${y1 + bend}, ${x2} ${y2 - bend}, ${x2} ${y2}`, reach: x1 };
  // Both control points at c put the curve's midpoint at (x1 + x2) / 8 + 0.75 c: solve for reach.
  const c = (reach - (x1 + x2) / 8) / 0.75;
  return { d: `M ${x1} ${y1} C ${c} ${y1 + bend}, ${c} ${y2 - bend}, ${x2} ${y2}`, reach };
}

/** Where an edge that skips layers must pass to clear the nodes in between (the nearer side), or null. */
function bowReach(pos, a, b, mid) {
  const between = [...pos.values()].filter((p) => p.y > Math.min(a.y, b.y) && p.y < Math.max(a.y, b.y));
  if (!between.length) return null;
  const right = Math.max(...between.map((p) => p.x + NODE_W)) + GAP_X / 2;
  const left = Math.min(...between.map((p) => p.x)) - GAP_X / 2;
  return right - mid <= mid - left ? right : left;
}

function nodeBox(node, at) {
  const g = svgEl("g", { class: "node", transform: `translate(${at.x} ${at.y})` });
  g.dataset.node = node.id;
  const title = svgEl("title");
  title.textContent = `${node.id} (${node.type})`;
  const rect = svgEl("rect", { width: NODE_W, height: NODE_H, rx: 8 });
  const name = svgEl("text", { x: NODE_W / 2, y: 17, class: "node-name" });
  name.textContent = clip(node.id, 17);
  const type = svgEl("text", { x: NODE_W / 2, y: 32, class: "node-type" });
  type.textContent = clip(node.type, 20);
  g.append(title, rect, name, type);
  return g;
}

function arrowMarker() {
  const defs = svgEl("defs");
  const marker = svgEl("marker", {
    id: "rf-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto",
    markerUnits: "userSpaceOnUse", // the same size on thin and thick (stream) edges
  });
  marker.append(svgEl("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head" }));
  defs.append(marker);
  return defs;
}

function svgEl(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  return el;
}

function clip(text, max) {
  const s = String(text ?? "");
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}
