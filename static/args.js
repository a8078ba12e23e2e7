/*
 * Parley demo page — the input args form, generated from the selected assistant's
 * `inputArgs` (type, enum, default, required, description), and its validation. Plain script:
 * defines `window.ParleyArgs.create(kit, hooks)`; app.js passes its DOM helpers (`kit`) and
 * `hooks` = {state, updatePanelDot, openPanel}. Values are checked here before a send; errors
 * the server finds (`invalid_args`) are shown on the same fields.
 */
(function () {
  "use strict";

  function create(kit, hooks) {
    const { $, el, humanize, prettyJson } = kit;
    const { state, updatePanelDot, openPanel } = hooks;

    /** Build the form from the assistant's inputArgs. */
    function renderArgsForm(args) {
      const form = $("args-form");
      $("args-error").hidden = true;
      form.replaceChildren();
      $("args-hint").textContent = args.length ? "Sent with every message." : "This assistant takes no input args.";
      for (const arg of args) form.append(argField(arg));
      updatePanelDot();
    }

    function argField(arg) {
      const id = "arg-" + arg.name;
      const label = el(
        "label",
        { for: id },
        arg.title || humanize(arg.name),
        arg.required ? el("span", { class: "req", "aria-hidden": "true" }, " *") : null
      );
      const describedBy = [];
      const hint = arg.description ? el("p", { class: "field-hint", id: id + "-hint" }, arg.description) : null;
      if (hint) describedBy.push(hint.id);
      const error = el("p", { class: "field-error", id: id + "-error", hidden: true });
      describedBy.push(error.id);
      const common = {
        id,
        name: arg.name,
        "aria-describedby": describedBy.join(" "),
        required: !!arg.required,
        dataset: { type: arg.type || "string" },
      };
      let control;
      if (Array.isArray(arg.enum) && arg.enum.length) {
        control = el("select", common, arg.required ? null : el("option", { value: "" }, "—"));
        arg.enum.forEach((v, i) => control.append(el("option", { value: String(i) }, String(v))));
        const di = arg.default !== undefined ? arg.enum.findIndex((v) => v === arg.default) : -1;
        control.value = di >= 0 ? String(di) : arg.required ? "0" : "";
      } else if (arg.type === "boolean") {
        control = el("input", { ...common, type: "checkbox", required: false });
        control.checked = arg.default === true;
        const wrap = el("div", { class: "field field-check", dataset: { arg: arg.name } }, control, label, hint, error);
        control.addEventListener("change", () => clearFieldError(arg.name));
        return wrap;
      } else if (arg.type === "number" || arg.type === "integer") {
        control = el("input", { ...common, type: "number", step: arg.type === "integer" ? "1" : "any", inputmode: "decimal" });
        if (typeof arg.default === "number") control.value = String(arg.default);
      } else if (arg.type === "array") {
        // A list: one item a line (a JSON array is accepted too).
        control = el("textarea", { ...common, rows: "3", dir: "auto", placeholder: "One item a line" });
        if (Array.isArray(arg.default)) control.value = listText(arg.default);
      } else if (arg.type === "object") {
        control = el("textarea", { ...common, rows: "3", class: "mono", spellcheck: "false", placeholder: "{ }" });
        if (arg.default !== undefined) control.value = prettyJson(arg.default);
      } else {
        control = el("input", { ...common, type: "text" });
        if (arg.default !== undefined && arg.default !== null) control.value = String(arg.default);
      }
      control.addEventListener("input", () => clearFieldError(arg.name));
      return el("div", { class: "field", dataset: { arg: arg.name } }, label, control, hint, error);
    }

    /** A list as lines, or as JSON when an item is itself a list or an object. */
    function listText(v) {
      return v.every((x) => x === null || typeof x !== "object") ? v.map((x) => String(x)).join("\n") : prettyJson(v);
    }

    /** Read and check the form: {ok, values, errors: {name: message}}. */
    function collectArgs() {
      const values = {};
      const errors = {};
      for (const arg of (state.assistant && state.assistant.inputArgs) || []) {
        const control = $("arg-" + arg.name);
        if (!control) continue;
        const type = arg.type || "string";
        if (Array.isArray(arg.enum) && arg.enum.length) {
          if (control.value === "") {
            if (arg.required) errors[arg.name] = "Choose a value.";
          } else values[arg.name] = arg.enum[Number(control.value)];
          continue;
        }
        if (type === "boolean") {
          values[arg.name] = control.checked;
          continue;
        }
        const raw = control.value.trim();
        if (raw === "") {
          if (arg.required) errors[arg.name] = "This field is required.";
          continue;
        }
        if (type === "number" || type === "integer") {
          const n = Number(raw);
          if (!Number.isFinite(n)) errors[arg.name] = "Enter a number.";
          else if (type === "integer" && !Number.isInteger(n)) errors[arg.name] = "Enter a whole number.";
          else values[arg.name] = n;
        } else if (type === "array" && !raw.startsWith("[")) {
          const items = raw.split("\n").map((x) => x.trim()).filter(Boolean);
          const numeric = arg.items && (arg.items.type === "number" || arg.items.type === "integer");
          values[arg.name] = numeric ? items.map((x) => (Number.isFinite(Number(x)) ? Number(x) : x)) : items;
        } else if (type === "object" || type === "array") {
          try {
            const v = JSON.parse(raw);
            const isArray = Array.isArray(v);
            if (type === "array" && !isArray) errors[arg.name] = "Enter a JSON array, like [1, 2].";
            else if (type === "object" && (isArray || v === null || typeof v !== "object"))
              errors[arg.name] = 'Enter a JSON object, like {"key": "value"}.';
            else values[arg.name] = v;
          } catch (e) {
            errors[arg.name] = "Not valid JSON: " + e.message;
          }
        } else {
          values[arg.name] = control.value;
        }
      }
      return { ok: Object.keys(errors).length === 0, values, errors };
    }

    /** Put stored args (e.g. of a reopened conversation) back into the form. */
    function fillArgsForm(values) {
      for (const arg of (state.assistant && state.assistant.inputArgs) || []) {
        const control = $("arg-" + arg.name);
        if (!control || !(arg.name in values)) continue;
        const v = values[arg.name];
        if (Array.isArray(arg.enum) && arg.enum.length) {
          const i = arg.enum.findIndex((x) => x === v);
          if (i >= 0) control.value = String(i);
        } else if (arg.type === "boolean") control.checked = v === true;
        else if (arg.type === "array" && Array.isArray(v)) control.value = listText(v);
        else if (arg.type === "object" || arg.type === "array") control.value = prettyJson(v);
        else control.value = v === null ? "" : String(v);
      }
    }

    function showFieldErrors(errors, general) {
      let shown = 0;
      for (const [name, message] of Object.entries(errors)) {
        const box = $("arg-" + name + "-error");
        if (!box) continue;
        box.textContent = message;
        box.hidden = false;
        $("arg-" + name).setAttribute("aria-invalid", "true");
        shown++;
      }
      const extra = Object.keys(errors).filter((n) => !$("arg-" + n + "-error"));
      const generalText = [general, ...extra.map((n) => n + ": " + errors[n])].filter(Boolean).join(" ");
      $("args-error").textContent = generalText;
      $("args-error").hidden = !generalText;
      updatePanelDot(shown > 0 || !!generalText);
      if (shown || generalText) {
        openPanel();
        const first = Object.keys(errors).map((n) => $("arg-" + n)).find(Boolean);
        if (first) first.focus();
      }
    }

    function clearFieldError(name) {
      const box = $("arg-" + name + "-error");
      if (box) box.hidden = true;
      const control = $("arg-" + name);
      if (control) control.removeAttribute("aria-invalid");
      if (!document.querySelector("#args-form [aria-invalid]")) {
        $("args-error").hidden = true;
        updatePanelDot(false);
      }
    }

    /** Server `invalid_args`: details may be [{field, message}], {field: message} or text. */
    function showServerArgErrors(err) {
      const errors = {};
      const d = err.details;
      if (Array.isArray(d)) {
        for (const item of d) {
          if (item && typeof item === "object") {
            const f = item.field || item.name || item.path;
            if (f) errors[String(f).replace(/^(args|start)\./, "")] = item.message || "Invalid value.";
          }
        }
      } else if (d && typeof d === "object") {
        for (const [f, m] of Object.entries(d)) errors[f] = typeof m === "string" ? m : prettyJson(m);
      }
      const hasFields = Object.keys(errors).length > 0;
      showFieldErrors(errors, hasFields ? "" : err.message);
    }


    return { renderArgsForm, collectArgs, fillArgsForm, showFieldErrors, showServerArgErrors };
  }

  window.ParleyArgs = { create };
})();
