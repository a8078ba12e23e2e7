/*
 * Parley demo page — Action in Conversation cards and tool confirmations in the chat: the
 * message (a tool call in words), the data (a table, or form fields when the node allows
 * editing), one button per choice. A click resumes the interrupt once; a refused answer
 * unlocks the card again. Plain script: defines `window.ParleyCards.create(kit, hooks)` with
 * `hooks` = {client, append}; `actionCard(interrupt, meta)` returns the card's controller
 * `{nodeId, seq, closedSeq, answered(action, value)}` (app.js tells it how it was answered).
 */
(function () {
  "use strict";

  function create(kit, hooks) {
    const { el, humanize } = kit;
    const R = window.ParleyRender;
    const { client, append } = hooks;

    const BUTTON_KIND = { approve: "approve", confirm: "approve", yes: "approve", reject: "reject", deny: "reject", no: "reject" };

    /**
     * Action in Conversation (and tool confirmation): the message, the payload (editable when
     * the node allows it) and one button per choice. A click resumes the interrupt once.
     */
    function actionCard(interrupt, meta) {
      const conversationId = meta.conversationId;
      // Buttons come with the interrupt; approve/reject if it names none (tool confirmations).
      const buttons = Array.isArray(interrupt.buttons) && interrupt.buttons.length ? interrupt.buttons : ["approve", "reject"];
      const isTool = interrupt.reason === "tool_confirmation";
      const card = el("div", {
        class: "action-card",
        "data-testid": "action-card",
        role: "group",
        "aria-label": isTool ? "Tool confirmation" : "Action needed",
        dataset: { interruptId: interrupt.id, reason: interrupt.reason || "" },
      });
      card.append(el("div", { class: "action-card-kicker" }, isTool ? "Confirm" : "Action needed"));
      const payload = interrupt.payload;
      if (isTool) {
        // In words ("Refund 120 EUR on INV-1002?"), the call itself behind a disclosure.
        card.append(el("p", { class: "action-card-message", dir: "auto" }, R.toolSentence(interrupt)));
        if (payload !== undefined && payload !== null) card.append(R.jsonDisclosure(payload, "Show the tool call"));
      } else if (interrupt.message) card.append(el("p", { class: "action-card-message", dir: "auto" }, interrupt.message));

      // The card's data: a table, or form fields (from its shape) when the node allows editing.
      const hasPayload = payload !== undefined && payload !== null && !(typeof payload === "object" && Object.keys(payload).length === 0);
      const display = el("div", { class: "action-card-payload" });
      let editor = null;
      const showEditor = () => {
        if (editor) return;
        editor = R.dataForm(hasPayload ? payload : {}, "card-" + String(interrupt.id).replace(/[^A-Za-z0-9_-]/g, ""));
        display.replaceChildren(editor.node);
      };
      if (!isTool) {
        if (interrupt.editable) showEditor();
        else if (hasPayload) display.append(R.valueNode(payload));
      }
      card.append(display);
      const error = el("p", { class: "field-error", hidden: true, role: "alert" });
      card.append(error);

      // "reply" asks for a text answer in the card itself.
      let replyBox = null;
      const row = el("div", { class: "action-card-buttons" });
      const status = el("p", { class: "action-card-status", role: "status" });
      const ctrl = { nodeId: interrupt.nodeId, seq: meta.seq, done: false, closedSeq: 0, label: isTool ? "the confirmation" : interrupt.message || "the card" };
      const buttonEls = new Map();

      const lock = (chosen, text) => {
        ctrl.done = true;
        card.classList.add("answered");
        for (const [name, b] of buttonEls) {
          b.disabled = true;
          if (name === chosen) {
            b.classList.add("chosen");
            b.setAttribute("aria-pressed", "true");
          }
        }
        if (editor) editor.setReadOnly(true);
        if (replyBox) replyBox.readOnly = true;
        status.textContent = text;
      };
      const answerText = (action, value) =>
        action === "reply" && typeof value === "string" && value ? "Answered with a reply: “" + value + "”" : action ? "Answered: " + humanize(action) : "Answered";
      ctrl.answered = (action, value) => {
        if (ctrl.done) {
          if (action && !ctrl.action) {
            ctrl.action = action;
            if (buttonEls.has(action)) lock(action, answerText(action, value));
            else status.textContent = answerText(action, value);
          }
          return;
        }
        ctrl.action = action || null;
        lock(action, answerText(action, value));
      };

      const submit = (name) => {
        let value = null;
        if (editor) {
          try {
            value = editor.value();
          } catch (e) {
            error.textContent = e.message;
            error.hidden = false;
            return;
          }
        }
        if (name === "reply") {
          if (!replyBox) {
            replyBox = el("textarea", { class: "action-card-reply", rows: "2", placeholder: "Your reply…", "aria-label": "Your reply" });
            card.insertBefore(replyBox, row);
            replyBox.focus();
            return;
          }
          if (!replyBox.value.trim()) {
            replyBox.focus();
            return;
          }
          value = replyBox.value.trim();
        }
        if (name === "edit" && !editor) {
          showEditor();
          const first = editor.node.querySelector("input, textarea");
          if (first) first.focus();
          buttonEls.get("edit").lastChild.textContent = "Save edits";
          return;
        }
        error.hidden = true;
        lock(name, "Sending…");
        ctrl.action = name;
        client.resume(interrupt.id, name, value, conversationId).then(
          () => {
            status.textContent = answerText(name, value);
          },
          (err) => {
            if (err.code === "interrupt_not_pending") {
              status.textContent = "Already answered";
              return;
            }
            // Not applied: let the user try again.
            ctrl.done = false;
            ctrl.action = null;
            card.classList.remove("answered");
            for (const b of buttonEls.values()) {
              b.disabled = false;
              b.classList.remove("chosen");
              b.removeAttribute("aria-pressed");
            }
            if (editor) editor.setReadOnly(false);
            if (replyBox) replyBox.readOnly = false;
            status.textContent = "";
            error.textContent = err.message;
            error.hidden = false;
          }
        );
      };

      for (const name of buttons) {
        const kind = BUTTON_KIND[String(name).toLowerCase()] || "neutral";
        const b = el(
          "button",
          { type: "button", class: "btn btn-" + kind, "data-testid": "action-button", dataset: { action: name }, onclick: () => submit(name) },
          el("span", {}, humanize(name))
        );
        buttonEls.set(name, b);
        row.append(b);
      }
      card.append(row, status);
      append(card);
      return ctrl;
    }


    return { actionCard };
  }

  window.ParleyCards = { create };
})();
