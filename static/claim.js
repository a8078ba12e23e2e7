/*
 * Parley demo page — the sample business form ("Expense claim form") that Action in Page
 * nodes named `fill_claim_form` fill in. Plain script: defines `window.ParleyClaim.create`.
 *
 * Invariants:
 * - A request belongs to the conversation whose interrupt made it. Requests are kept per
 *   conversation; the form shows only the one of the conversation on screen (`show(id)`), and
 *   Submit answers only that one. Switching conversation or assistant puts the form back to
 *   idle (or to the other conversation's own pending request, with its own values).
 * - While waiting, the panel names the conversation it answers.
 * - With nothing waiting, Submit is disabled and the form says it is a sample: nothing is
 *   saved anywhere.
 */
(function () {
  "use strict";

  const FIELDS = ["employee", "department", "amount", "currency", "purpose", "date"];

  /**
   * `opts`: `current()` → the conversation on screen; `titleOf(id)` → its title;
   * `onChange()` after the waiting state changed; `reveal()` shows the panel; `afterSubmit()`.
   */
  function create(opts) {
    const $ = (id) => document.getElementById(id);
    const form = $("claim-form");
    const pending = new Map(); // conversationId -> {resolve, interrupt, params}
    let shownFor = null; // conversationId whose request the form shows, or null (idle)

    function set(name, value) {
      const input = form.elements[name];
      if (!input) return false;
      const text = value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
      if (name === "amount") {
        const n = typeof value === "number" ? value : Number(String(text).replace(/[^0-9.\-]/g, ""));
        if (!Number.isFinite(n) || text.trim() === "") return false;
        input.value = String(n);
        return true;
      }
      input.value = name === "date" ? text.slice(0, 10) : text;
      return input.value !== "" || text === "";
    }

    function values() {
      const out = {};
      for (const name of [...FIELDS, "notes"]) {
        const v = form.elements[name].value.trim();
        out[name] = name === "amount" ? (v === "" ? null : Number(v)) : v;
      }
      return out;
    }

    function fill(params) {
      form.reset();
      const notes = [];
      for (const [key, value] of Object.entries(params || {})) {
        if (key === "notes") notes.unshift(String(value));
        else if (!FIELDS.includes(key) || !set(key, value)) {
          notes.push(key + ": " + (typeof value === "object" ? JSON.stringify(value) : String(value)));
        }
      }
      form.elements.notes.value = notes.join("\n");
    }

    /** Show the request of `conversationId` (or the idle sample form when it has none). */
    function show(conversationId) {
      const p = conversationId ? pending.get(conversationId) : null;
      if (p && shownFor === conversationId) return; // keep what the person is typing
      shownFor = p ? conversationId : null;
      if (p) fill(p.params);
      else form.reset();
      $("claim-status").textContent = "";
      render();
    }

    function render() {
      const p = shownFor ? pending.get(shownFor) : null;
      const on = !!p;
      $("claim-panel").classList.toggle("highlight", on);
      $("claim-panel").dataset.conversation = on ? shownFor : "";
      $("claim-waiting").hidden = !on;
      $("claim-submit").disabled = !on;
      $("claim-hint").textContent = on
        ? (p.interrupt.message || p.interrupt.prompt || "The assistant filled this form. Check it and press Submit.")
        : "A sample form, not saved anywhere. Assistants with an Action in Page (fill_claim_form) fill it in and wait for you to press Submit.";
      const answers = $("claim-answers");
      answers.hidden = !on;
      answers.textContent = on ? "Submit answers the conversation “" + (opts.titleOf(shownFor) || "this conversation") + "”." : "";
      opts.onChange();
    }

    /** The page-action handler: remember the request under its conversation. */
    function request(params, interrupt, ctx) {
      const conversationId = ctx.conversationId;
      return new Promise((resolve) => {
        pending.set(conversationId, { resolve, interrupt, params });
        ctx.signal.addEventListener("abort", () => {
          const p = pending.get(conversationId);
          if (!p || p.interrupt !== interrupt) return;
          pending.delete(conversationId);
          if (shownFor === conversationId) {
            shownFor = null;
            form.reset();
            render();
            $("claim-status").textContent = "Answered in the chat.";
          } else opts.onChange();
        });
        if (conversationId === opts.current()) {
          shownFor = null;
          show(conversationId);
          opts.reveal();
        } else opts.onChange();
      });
    }

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const amount = form.elements.amount;
      const amountError = $("claim-amount-error");
      if (amount.value !== "" && !Number.isFinite(Number(amount.value))) {
        amountError.textContent = "Enter a number.";
        amountError.hidden = false;
        amount.focus();
        return;
      }
      amountError.hidden = true;
      // Only the request of the conversation on screen, and only if the form shows it.
      const id = shownFor;
      const p = id && id === opts.current() ? pending.get(id) : null;
      if (!p) {
        show(opts.current());
        $("claim-status").textContent = "No assistant in this conversation is waiting for this form.";
        return;
      }
      pending.delete(id);
      shownFor = null;
      const v = values();
      render();
      $("claim-status").textContent = "Sent to the assistant ✓";
      p.resolve(v);
      opts.afterSubmit();
    });

    for (const f of form.elements) f.addEventListener("input", () => f.removeAttribute("aria-invalid"));

    return {
      request,
      show,
      refreshTitle: () => shownFor && render(),
      isWaiting: () => !!shownFor,
      waitingIn: (id) => pending.has(id),
      waitingConversations: () => Array.from(pending.keys()),
    };
  }

  window.ParleyClaim = { create };
})();
