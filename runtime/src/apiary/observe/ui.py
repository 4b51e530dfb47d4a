"""The Hubble UI page the relay serves: one self-contained HTML page (inline CSS and JavaScript, no
external fetch) with a namespace picker, the namespace's service map (SVG) and a live flow table.

The page reads three routes of the server that serves it (respond() answers them, UIServer serves
page and routes over HTTP):
  GET /api/namespaces                      -> {"namespaces": [...]}
  GET /api/servicemap?namespace=NS         -> apiary.observe.servicemap.build(flows, NS)
  GET /api/flows?namespace=NS&last=N       -> {"flows": [the last N flows touching NS, oldest first]}
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from apiary.observe import servicemap
from apiary.observe.server import HttpServer

MAX_LAST = 10000

_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Apiary Hubble</title>
<style>
body { font-family: sans-serif; margin: 0; background: #f6f7f9; color: #222; }
header { background: #263238; color: #fff; padding: 8px 16px; display: flex; gap: 16px; align-items: center; }
header h1 { font-size: 18px; margin: 0; }
main { padding: 12px 16px; }
#servicemap { background: #fff; border: 1px solid #ccd; width: 100%; height: 460px; }
.node rect { fill: #e3f2fd; stroke: #1565c0; stroke-width: 1.5; rx: 6; }
.node.reserved rect { fill: #f3e5f5; stroke: #6a1b9a; }
.node.external-workload rect, .node.unknown rect { fill: #fffde7; stroke: #9e9d24; }
.node text { font-size: 13px; text-anchor: middle; dominant-baseline: middle; }
.edge line { stroke: #43a047; stroke-width: 1.8; }
.edge text { font-size: 11px; fill: #2e7d32; text-anchor: middle; }
.edge.dropped line { stroke: #d32f2f; stroke-dasharray: 6 4; }
.edge.dropped text { fill: #d32f2f; }
table { border-collapse: collapse; width: 100%; margin-top: 12px; background: #fff; font-size: 13px; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 3px 6px; text-align: left; white-space: nowrap; }
tr.dropped td { background: #ffebee; color: #b71c1c; }
#status { font-size: 12px; color: #b0bec5; }
</style>
</head>
<body>
<header>
  <h1>Apiary Hubble</h1>
  <label>Namespace <select id="namespace"></select></label>
  <span id="status">loading</span>
</header>
<main>
  <svg id="servicemap" xmlns="http://www.w3.org/2000/svg" data-namespace="">
    <defs>
      <marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto">
        <path d="M0,0 L10,5 L0,10 z" fill="#555"></path>
      </marker>
    </defs>
    <g id="edges"></g>
    <g id="nodes"></g>
  </svg>
  <table id="flows">
    <thead><tr><th>Time</th><th>Source</th><th>Destination</th><th>Verdict</th><th>Summary</th></tr></thead>
    <tbody id="flow-rows"></tbody>
  </table>
</main>
<script>
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const BOX_W = 150, BOX_H = 34;
let current = new URLSearchParams(window.location.search).get("namespace") || "";

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

async function getJSON(path) {
  const response = await fetch(path, {cache: "no-store"});
  if (!response.ok) throw new Error(path + ": " + response.status);
  return response.json();
}

function status(text) { document.getElementById("status").textContent = text; }

// Columns by depth: clients on the left, what they call to the right (a cycle is cut off).
function layout(nodes, edges, width, height) {
  const depth = {};
  nodes.forEach(n => { depth[n.id] = 0; });
  for (let round = 0; round < nodes.length; round++) {
    let moved = false;
    edges.forEach(e => {
      if (e.source !== e.destination && depth[e.destination] < depth[e.source] + 1 && depth[e.source] + 1 < nodes.length) {
        depth[e.destination] = depth[e.source] + 1; moved = true;
      }
    });
    if (!moved) break;
  }
  const columns = [];
  nodes.forEach(n => { (columns[depth[n.id]] = columns[depth[n.id]] || []).push(n); });
  const used = columns.filter(c => c);
  const place = {};
  used.forEach((group, c) => {
    const x = (c + 1) * width / (used.length + 1);
    group.forEach((n, i) => { place[n.id] = {x: x, y: (i + 1) * height / (group.length + 1)}; });
  });
  return place;
}

function endpointAt(from, to) {
  // Where the line from `from` to `to` leaves the box around `to`.
  const dx = to.x - from.x, dy = to.y - from.y;
  if (!dx && !dy) return to;
  const scale = Math.min(dx ? (BOX_W / 2) / Math.abs(dx) : Infinity, dy ? (BOX_H / 2) / Math.abs(dy) : Infinity);
  return {x: to.x - dx * scale, y: to.y - dy * scale};
}

function drawMap(map) {
  const root = document.getElementById("servicemap");
  root.setAttribute("data-namespace", map.namespace);
  const width = root.clientWidth || 900, height = root.clientHeight || 460;
  const nodesG = document.getElementById("nodes"), edgesG = document.getElementById("edges");
  nodesG.replaceChildren(); edgesG.replaceChildren();
  const place = layout(map.nodes, map.edges, width, height);
  map.edges.forEach((e, i) => {
    const a = place[e.source], b = place[e.destination];
    if (!a || !b) return;
    const start = endpointAt(b, a), end = endpointAt(a, b);
    const label = (e.port !== null && e.port !== undefined ? e.port + "/" : "") + e.protocol;
    const g = svg("g", {"class": "edge" + (e.is_dropped ? " dropped" : ""), "id": "edge-" + i,
                        "data-source": e.source, "data-destination": e.destination,
                        "data-port": e.port === null || e.port === undefined ? "" : String(e.port),
                        "data-protocol": e.protocol, "data-forwarded": String(e.forwarded),
                        "data-dropped": String(e.dropped)});
    g.appendChild(svg("line", {x1: start.x, y1: start.y, x2: end.x, y2: end.y, "marker-end": "url(#arrow)"}));
    const text = label + (e.is_dropped ? " dropped" : "");
    g.appendChild(svg("text", {x: (start.x + end.x) / 2, y: (start.y + end.y) / 2 - 4, "class": "edge-label"}, text));
    g.appendChild(svg("title", {}, e.source + " -> " + e.destination + " " + label + ": " + e.forwarded +
                      " forwarded, " + e.dropped + " dropped" +
                      (e.drop_reasons.length ? " (" + e.drop_reasons.join(", ") + ")" : "")));
    edgesG.appendChild(g);
  });
  map.nodes.forEach(n => {
    const p = place[n.id];
    const g = svg("g", {"class": "node " + n.kind, "data-node-id": n.id, "data-kind": n.kind,
                        "data-name": n.name, "id": "node-" + n.id.replace(/[^A-Za-z0-9_-]/g, "_")});
    g.appendChild(svg("rect", {x: p.x - BOX_W / 2, y: p.y - BOX_H / 2, width: BOX_W, height: BOX_H}));
    g.appendChild(svg("text", {x: p.x, y: p.y, "class": "node-label"}, n.name));
    g.appendChild(svg("title", {}, n.id + (n.pods.length ? "\npods: " + n.pods.join(", ") : "")));
    nodesG.appendChild(g);
  });
}

function endpointText(ep, ip, port) {
  let text = ep && ep.pod_name ? ep.namespace + "/" + ep.pod_name : "";
  if (!text && ep && ep.labels) {
    const reserved = ep.labels.find(l => l.startsWith("reserved:"));
    if (reserved) text = reserved;
  }
  if (!text) text = ip || "";
  return port ? text + ":" + port : text;
}

function l4Ports(flow) {
  const l4 = flow.l4 || {};
  for (const p of ["TCP", "UDP", "SCTP"]) if (l4[p]) return [l4[p].source_port, l4[p].destination_port];
  return [null, null];
}

function drawFlows(flows) {
  const body = document.getElementById("flow-rows");
  const rows = flows.slice().reverse().map((f, i) => {  // newest first
    const ip = f.IP || {}, [sport, dport] = l4Ports(f);
    const tr = document.createElement("tr");
    tr.className = "flow" + (f.verdict === "DROPPED" ? " dropped" : "");
    tr.setAttribute("data-verdict", f.verdict || "");
    const cells = [f.time || "", endpointText(f.source, ip.source, sport),
                   endpointText(f.destination, ip.destination, dport), f.verdict || "",
                   (f.Summary || "") + (f.drop_reason_desc ? " (" + f.drop_reason_desc + ")" : "")];
    ["time", "source", "destination", "verdict", "summary"].forEach((name, c) => {
      const td = document.createElement("td");
      td.className = name;
      td.textContent = cells[c];
      tr.appendChild(td);
    });
    return tr;
  });
  body.replaceChildren(...rows);
}

async function loadNamespaces() {
  const data = await getJSON("/api/namespaces");
  const select = document.getElementById("namespace");
  const names = data.namespaces.slice();
  if (current && !names.includes(current)) names.push(current);
  if (!current && names.length) current = names.includes("default") ? "default" : names[0];
  select.replaceChildren(...names.map(n => {
    const o = document.createElement("option");
    o.value = n; o.textContent = n;
    if (n === current) o.setAttribute("selected", "");
    return o;
  }));
}

async function refresh() {
  if (!current) { status("no namespace has flows yet"); return; }
  try {
    const q = "namespace=" + encodeURIComponent(current);
    const [map, flows] = await Promise.all([getJSON("/api/servicemap?" + q), getJSON("/api/flows?" + q + "&last=100")]);
    drawMap(map);
    drawFlows(flows.flows);
    status(current + ": " + map.nodes.length + " workloads, " + flows.flows.length + " flows, updated " +
           new Date().toLocaleTimeString());
  } catch (err) {
    status("error: " + err.message);
  }
}

document.getElementById("namespace").addEventListener("change", ev => {
  current = ev.target.value;
  const url = new URL(window.location.href);
  url.searchParams.set("namespace", current);
  window.history.replaceState(null, "", url);
  refresh();
});

loadNamespaces().then(refresh).catch(err => status("error: " + err.message));
setInterval(refresh, 2000);
</script>
</body>
</html>
"""


def page() -> bytes:
    return _PAGE.encode()


def respond(target: str, flows_for, namespaces) -> tuple:
    """Answer one GET for the page or its API: (status, content type, body).

    flows_for(namespace or None, last) -> flows touching it, oldest first; namespaces() -> names."""
    url = urlsplit(target)
    query = parse_qs(url.query)
    namespace = (query.get("namespace") or [""])[0]
    if url.path in ("/", "/index.html"):
        return 200, "text/html; charset=utf-8", page()
    if url.path == "/api/namespaces":
        return _json({"namespaces": sorted(namespaces())})
    if url.path in ("/api/servicemap", "/api/flows") and not namespace:
        return _json({"error": "namespace: a namespace is required (?namespace=NAME)"}, 400)
    if url.path == "/api/servicemap":
        return _json(servicemap.build(flows_for(namespace, None), namespace))
    if url.path == "/api/flows":
        text = (query.get("last") or ["100"])[0]
        if not text.isdigit() or not 0 < int(text) <= MAX_LAST:
            return _json({"error": "last: %r is not a number from 1 to %d" % (text, MAX_LAST)}, 400)
        return _json({"flows": flows_for(namespace, int(text))})
    return _json({"error": "%s: not found" % url.path}, 404)


def _json(data, code=200) -> tuple:
    return code, "application/json", json.dumps(data).encode()


def touching(flows: list, namespace: str | None, last: int | None) -> list:
    """The flows with an endpoint in `namespace` (all with None), the last `last` of them."""
    if namespace:
        flows = [f for f in flows if namespace in ((f.get("source") or {}).get("namespace"),
                                                   (f.get("destination") or {}).get("namespace"))]
    return flows[-last:] if last else list(flows)


class UIServer:
    """The page and its API over HTTP on host:port (apiary.observe.server.HttpServer)."""

    def __init__(self, host: str, port: int, flows_for, namespaces):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                try:
                    code, content_type, body = respond(self.path, flows_for, namespaces)
                except Exception as exc:  # noqa: BLE001 - the page shows what broke
                    code, content_type, body = _json({"error": str(exc)}, 500)
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # the page polls every 2 s: no access log
                pass

        self.httpd = HttpServer((host, port), Handler)
        self.address = self.httpd.server_address
        self.thread = None

    def start(self) -> "UIServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="hubble-ui", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
