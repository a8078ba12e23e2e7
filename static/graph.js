/*
 * Parley demo page — the graph view: the selected assistant's process as a picture, laid out
 * by dagre (vendored), with the path taken so far marked and the running or waiting node
 * highlighted live. Plain script: defines `window.ParleyGraph.create`.
 *
 * Data: the definition's nodes and edges when the server gives them (`graph` in
 * `GET /api/assistants/{id}`: `{nodes: [{id, type, title?}], edges: [{from, to, port?}]}`);
 * without it, the nodes this conversation has reached (from its STEP_* events), joined in the
 * order they ran. Nodes are drawn as SVG groups with `data-node` = the node id and
 * `data-state` = `running` | `waiting` | `done` | `` (not reached).
 */
(function () {
  "use strict";

  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) n.setAttribute(k, String(v));
    for (const c of children) if (c) n.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return n;
  }

  const TYPE_LABELS = {
    start: "Start", end: "End", llm: "LLM", agent: "Agent", router: "Router", condition: "Condition",
    function: "Function", iteration: "Loop", reply: "Reply", conversation_action: "Action in Conversation",
    page_action: "Action in Page",
  };

  function create(container) {
    let definition = null; // {nodes, edges} from the server, or null
    let trace = []; // [{id, type}] in the order the conversation reached them
    const states = new Map(); // node id -> running | waiting | done

    function model() {
      if (definition && Array.isArray(definition.nodes) && definition.nodes.length) {
        return { nodes: definition.nodes, edges: definition.edges || [], complete: true };
      }
      const nodes = [];
      const seen = new Set();
      const edges = [];
      let prev = null;
      for (const t of trace) {
        if (!seen.has(t.id)) {
          seen.add(t.id);
          nodes.push({ id: t.id, type: t.type });
        }
        if (prev && prev !== t.id && !edges.some((e) => e.from === prev && e.to === t.id)) edges.push({ from: prev, to: t.id });
        prev = t.id;
      }
      return { nodes, edges, complete: false };
    }

    function render() {
      if (!container.isConnected || container.closest("[hidden]")) return;
      const m = model();
      container.replaceChildren();
      const note = document.createElement("p");
      note.className = "graph-note";
      note.textContent = m.complete
        ? "Every node of the assistant; the path this conversation took is marked."
        : m.nodes.length
          ? "The nodes this conversation has reached so far, in order (this server does not send the whole graph)."
          : "Send a message: the nodes the assistant runs appear here.";
      container.append(note);
      if (!m.nodes.length || !window.dagre) return;

      const g = new window.dagre.graphlib.Graph({ multigraph: true });
      g.setGraph({ rankdir: "TB", nodesep: 24, ranksep: 36, marginx: 8, marginy: 8 });
      g.setDefaultEdgeLabel(() => ({}));
      // Wide enough for the longer of its two lines (title; type and state), ~7 px a character.
      for (const n of m.nodes) {
        const longest = Math.max(String(n.title || n.id).slice(0, 22).length, ((TYPE_LABELS[n.type] || n.type || "") + " · waiting").length);
        g.setNode(n.id, { width: Math.max(150, 7 * longest + 24), height: 48, node: n });
      }
      m.edges.forEach((e, i) => {
        if (g.hasNode(e.from) && g.hasNode(e.to)) g.setEdge(e.from, e.to, { label: e.port || "", width: e.port ? 8 * e.port.length : 0, height: e.port ? 16 : 0 }, "e" + i);
      });
      window.dagre.layout(g);
      const { width, height } = g.graph();

      const reached = new Set(trace.map((t) => t.id));
      const out = svg("svg", {
        class: "graph-svg",
        viewBox: `0 0 ${Math.ceil(width)} ${Math.ceil(height)}`,
        width: Math.ceil(width),
        role: "img",
        "aria-label": "Process graph: " + m.nodes.map((n) => n.title || n.id).join(", "),
        "data-testid": "graph-svg",
      });
      out.append(
        svg("defs", {}, svg("marker", { id: "graph-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0 0L10 5L0 10z", class: "graph-arrow" })))
      );
      for (const e of g.edges()) {
        const lab = g.edge(e);
        const pts = lab.points || [];
        const d = pts.map((p, i) => (i ? "L" : "M") + p.x.toFixed(1) + " " + p.y.toFixed(1)).join(" ");
        const taken = reached.has(e.v) && reached.has(e.w);
        out.append(svg("path", { d, class: "graph-edge" + (taken ? " taken" : ""), "marker-end": "url(#graph-arrow)" }));
        if (lab.label) out.append(svg("text", { x: lab.x, y: lab.y + 4, class: "graph-port", "text-anchor": "middle" }, lab.label));
      }
      for (const id of g.nodes()) {
        const { x, y, width: w, height: h, node } = g.node(id);
        const state = states.get(id) || (reached.has(id) ? "done" : "");
        const title = node.title || node.id;
        const type = TYPE_LABELS[node.type] || node.type || "";
        const grp = svg(
          "g",
          { class: "graph-node" + (state ? " " + state : ""), "data-node": id, "data-state": state, transform: `translate(${(x - w / 2).toFixed(1)},${(y - h / 2).toFixed(1)})` },
          svg("title", {}, `${title} (${type})${state ? " — " + state : ""}`),
          svg("rect", { width: w, height: h, rx: 8 }),
          svg("text", { x: w / 2, y: 20, "text-anchor": "middle", class: "graph-title" }, title.length > 22 ? title.slice(0, 21) + "…" : title),
          svg("text", { x: w / 2, y: 37, "text-anchor": "middle", class: "graph-type" }, type + (state === "waiting" ? " · waiting" : state === "running" ? " · running" : ""))
        );
        out.append(grp);
      }
      // Its own size (the page's icon rule would shrink an svg), never wider than the dialog.
      out.style.width = Math.ceil(width) + "px";
      out.style.height = "auto";
      out.style.maxWidth = "100%";
      const scroller = document.createElement("div");
      scroller.className = "graph-scroll";
      scroller.append(out);
      container.append(scroller);
      const active = out.querySelector(".graph-node.waiting, .graph-node.running");
      if (active && active.scrollIntoView) active.scrollIntoView({ block: "center", inline: "center" });
    }

    return {
      setDefinition(d) {
        definition = d || null;
        render();
      },
      reset() {
        trace = [];
        states.clear();
        render();
      },
      step(id, type, state) {
        if (state === "running") trace.push({ id, type });
        if (state === "running") for (const [k, v] of states) if (v === "running" || v === "waiting") states.set(k, "done");
        states.set(id, state);
        render();
      },
      /** The run paused or ended: running nodes become `label` (waiting, or done). */
      settle(label) {
        for (const [k, v] of states) if (v === "running") states.set(k, label);
        render();
      },
      render,
    };
  }

  window.ParleyGraph = { create };
})();
