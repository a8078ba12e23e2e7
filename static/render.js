/*
 * Parley demo page — how values are shown: Markdown replies (marked + DOMPurify), copy
 * buttons, result cards laid out from an assistant's output args, card data as form fields,
 * tool confirmations in words. Plain script, no build step: defines `window.ParleyRender`.
 *
 * Rules kept here:
 * - Assistant text is Markdown, turned into HTML by `marked` and then sanitised by DOMPurify
 *   before it touches the DOM: no script, no event handler attribute, no `javascript:` link.
 *   Links open in a new tab with `rel="noopener noreferrer"`.
 * - Nothing here talks to the server; app.js decides when to show what.
 */
(function () {
  "use strict";

  /** Create an element: `el("div", {class: "x", onclick}, child, "text", [more])`. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (v === true) node.setAttribute(k, "");
      else node.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function svgIcon(name) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("aria-hidden", "true");
    const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
    use.setAttribute("href", "#i-" + name);
    svg.append(use);
    return svg;
  }

  function humanize(name) {
    const s = String(name).replace(/[_-]+/g, " ").replace(/([a-z])([A-Z])/g, "$1 $2").trim();
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  // ------------------------------------------------------------------ copy

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) {
      // Clipboard API refused (http, no permission): the old way.
      const ta = el("textarea", { class: "visually-hidden", "aria-hidden": "true" });
      ta.value = text;
      document.body.append(ta);
      ta.select();
      let ok = false;
      try {
        ok = document.execCommand("copy");
      } catch (_) {
        ok = false;
      }
      ta.remove();
      return ok;
    }
  }

  /** An icon button that copies `getText()`; its label says "Copied" for a moment. */
  function copyButton(getText, label) {
    const b = el("button", { type: "button", class: "icon-btn icon-btn-small copy-btn", "aria-label": label, title: label, "data-testid": "copy-button" }, svgIcon("copy"));
    b.addEventListener("click", async () => {
      const ok = await copyText(getText());
      b.setAttribute("aria-label", ok ? "Copied" : "Copy failed");
      b.classList.toggle("copied", ok);
      setTimeout(() => {
        b.setAttribute("aria-label", label);
        b.classList.remove("copied");
      }, 1500);
    });
    return b;
  }

  // ------------------------------------------------------------------ Markdown

  let purifyHooked = false;

  /** Markdown → a sanitised DocumentFragment (plain text if the libraries did not load). */
  function markdown(source) {
    const text = String(source || "");
    if (!window.marked || !window.DOMPurify) {
      const p = el("p", {}, text);
      const f = document.createDocumentFragment();
      f.append(p);
      return f;
    }
    if (!purifyHooked) {
      purifyHooked = true;
      window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
        if (node.tagName === "A" && node.hasAttribute("href")) {
          node.setAttribute("target", "_blank");
          node.setAttribute("rel", "noopener noreferrer");
        }
      });
    }
    const html = window.marked.parse(text, { gfm: true, breaks: true, async: false });
    const frag = window.DOMPurify.sanitize(html, {
      RETURN_DOM_FRAGMENT: true,
      FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe"],
    });
    // Copy buttons on code blocks; wide tables scroll inside the bubble.
    for (const pre of frag.querySelectorAll("pre")) {
      const code = pre.querySelector("code") || pre;
      const wrap = el("div", { class: "code-block" });
      pre.replaceWith(wrap);
      wrap.append(copyButton(() => code.textContent, "Copy code"), pre);
    }
    for (const table of frag.querySelectorAll("table")) {
      const wrap = el("div", { class: "table-scroll" });
      table.replaceWith(wrap);
      wrap.append(table);
    }
    return frag;
  }

  // ------------------------------------------------------------------ values

  function isPlainObject(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v);
  }

  /** A value as a person reads it: lists as items, objects as small tables, JSON last. */
  function valueNode(v) {
    if (v === null || v === undefined || v === "") return el("span", { class: "muted" }, "—");
    if (Array.isArray(v)) {
      if (v.every((x) => x === null || typeof x !== "object")) {
        return el("ul", { class: "chips" }, v.map((x) => el("li", { class: "chip-static" }, String(x))));
      }
      return el("ol", { class: "value-list" }, v.map((x) => el("li", {}, valueNode(x))));
    }
    if (isPlainObject(v)) return kvTable(v);
    if (typeof v === "boolean") return el("span", {}, v ? "Yes" : "No");
    return el("span", { dir: "auto" }, String(v));
  }

  function kvTable(obj, labels) {
    return el(
      "table",
      { class: "kv" },
      el(
        "tbody",
        {},
        Object.entries(obj).map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, (labels && labels[k]) || humanize(k)), el("td", {}, valueNode(v))))
      )
    );
  }

  /**
   * A run's result as a card: one row per output arg (in the assistant's order, with its title),
   * a long `summary`/`text` as a paragraph on top; the raw JSON behind a disclosure.
   */
  function resultCard(result, outputArgs) {
    const card = el("section", { class: "result-card", "data-testid": "result-card", "aria-label": "Result" });
    card.append(el("div", { class: "result-card-kicker" }, "Result"));
    const labels = {};
    const order = [];
    for (const a of outputArgs || []) {
      labels[a.name] = a.title || humanize(a.name);
      order.push(a.name);
    }
    const keys = [...order.filter((k) => k in result), ...Object.keys(result).filter((k) => !order.includes(k))];
    const rows = {};
    for (const k of keys) {
      const v = result[k];
      if ((k === "summary" || k === "text") && typeof v === "string" && v.length > 60) {
        card.append(el("p", { class: "result-card-text", dir: "auto" }, v));
      } else rows[k] = v;
    }
    if (Object.keys(rows).length) card.append(kvTable(rows, labels));
    card.append(jsonDisclosure(result, "Show JSON"));
    return card;
  }

  function jsonDisclosure(value, label) {
    return el("details", { class: "json-disclosure" }, el("summary", {}, label), el("pre", { class: "mono" }, JSON.stringify(value, null, 2)));
  }

  // ------------------------------------------------------------------ card data as a form

  /**
   * Form fields for a card's data, from its shape: numbers get number inputs, booleans a
   * checkbox, short strings a text input, long ones a textarea, arrays of scalars one item a
   * line, anything deeper a JSON box. `value()` returns the data with the same shape, or throws
   * an Error naming the field when a number or JSON field does not parse.
   */
  function dataForm(data, idPrefix) {
    const box = el("div", { class: "data-form", "data-testid": "data-form" });
    const getters = [];
    const obj = isPlainObject(data) ? data : { value: data };
    let i = 0;
    for (const [key, v] of Object.entries(obj)) {
      const id = idPrefix + "-" + i++;
      const label = el("label", { for: id }, humanize(key));
      let input;
      let get;
      if (typeof v === "number") {
        input = el("input", { id, type: "number", step: "any", name: key, inputmode: "decimal" });
        input.value = String(v);
        get = () => {
          const n = Number(input.value);
          if (input.value.trim() === "" || !Number.isFinite(n)) throw fieldError(input, humanize(key) + ": enter a number.");
          return n;
        };
      } else if (typeof v === "boolean") {
        input = el("input", { id, type: "checkbox", name: key });
        input.checked = v;
        get = () => input.checked;
      } else if (Array.isArray(v) && v.every((x) => x === null || typeof x !== "object")) {
        input = el("textarea", { id, rows: String(Math.min(6, Math.max(2, v.length))), name: key, "aria-describedby": id + "-hint" });
        input.value = v.join("\n");
        const numeric = v.length > 0 && v.every((x) => typeof x === "number");
        get = () => input.value.split("\n").map((s) => s.trim()).filter(Boolean).map((s) => (numeric && Number.isFinite(Number(s)) ? Number(s) : s));
        box.append(el("div", { class: "field" }, label, input, el("p", { class: "field-hint", id: id + "-hint" }, "One item a line.")));
        getters.push([key, get]);
        continue;
      } else if (v !== null && typeof v === "object") {
        input = el("textarea", { id, rows: "4", class: "mono", name: key, spellcheck: "false" });
        input.value = JSON.stringify(v, null, 2);
        get = () => {
          try {
            return JSON.parse(input.value);
          } catch (e) {
            throw fieldError(input, humanize(key) + " is not valid JSON.");
          }
        };
      } else {
        const text = v === null || v === undefined ? "" : String(v);
        input = text.length > 60 ? el("textarea", { id, rows: "3", name: key, dir: "auto" }) : el("input", { id, type: "text", name: key, dir: "auto" });
        input.value = text;
        get = () => (v === null && input.value === "" ? null : input.value);
      }
      box.append(el("div", { class: "field" + (typeof v === "boolean" ? " field-check" : "") }, label, input));
      getters.push([key, get]);
    }
    return {
      node: box,
      value() {
        const out = {};
        for (const [k, get] of getters) out[k] = get();
        return isPlainObject(data) ? out : out.value;
      },
      setReadOnly(on) {
        for (const f of box.querySelectorAll("input, textarea")) {
          if (f.type === "checkbox") f.disabled = on;
          else f.readOnly = on;
        }
      },
    };
  }

  function fieldError(input, message) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
    const e = new Error(message);
    e.field = input;
    return e;
  }

  // ------------------------------------------------------------------ tool confirmations

  /** "Refund 120 EUR on INV-1002?" style sentence for a tool confirmation. */
  function toolSentence(interrupt) {
    const p = interrupt.payload || {};
    const name = p.toolCallName || p.tool || p.name || (interrupt.params && interrupt.params.tool) || "";
    let args = p.arguments !== undefined ? p.arguments : p.args !== undefined ? p.args : p.input;
    if (typeof args === "string") {
      try {
        args = JSON.parse(args);
      } catch (_) {
        /* keep the text */
      }
    }
    const tool = humanize(String(name || "the tool")).toLowerCase();
    let detail = "";
    if (isPlainObject(args)) {
      const amount = args.amount !== undefined ? String(args.amount) + (args.currency ? " " + args.currency : "") : "";
      const target = args.invoice || args.invoiceId || args.invoice_id || args.id || args.key || args.target || "";
      if (/refund/i.test(name) && amount) return `Refund ${amount}${target ? " on " + target : ""}?`;
      detail = Object.entries(args)
        .filter(([, v]) => v === null || typeof v !== "object")
        .map(([k, v]) => humanize(k).toLowerCase() + " " + v)
        .join(", ");
    }
    return `Run ${tool}${detail ? " with " + detail : ""}?`;
  }

  window.ParleyRender = { el, svgIcon, humanize, copyButton, markdown, valueNode, kvTable, resultCard, jsonDisclosure, dataForm, toolSentence, isPlainObject };
})();
