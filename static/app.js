/*
 * app.js — Parley's demo page. Plain JavaScript, no build step; uses window.ParleyClient from
 * /static/parley.js. The chat is rendered only from the conversation's events (live or
 * replayed), keyed by seq, so a reconnect or a reopen never shows a message twice.
 *
 * Sections: DOM helpers · HTTP API · state · connection pill · assistants · conversations ·
 * input args form · chat rendering · action cards · Action in Page · composer (and the
 * typed-answer rule) · drawers · boot.
 *
 * Helpers in their own files (loaded first): render.js (Markdown, result cards, card data as
 * form fields, tool confirmations in words), claim.js (the sample claim form, per
 * conversation), graph.js (the graph view).
 */
(function () {
  "use strict";

  // ======================================================================== DOM helpers

  const $ = (id) => document.getElementById(id);
  const R = window.ParleyRender;

  /** el("div", {class: "x", dataset: {a: 1}, onclick: fn}, child, "text", ...) */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "text") node.textContent = value;
      else if (value === true) node.setAttribute(key, "");
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function icon(name) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("aria-hidden", "true");
    const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
    use.setAttribute("href", "#i-" + name);
    svg.append(use);
    return svg;
  }

  function prettyJson(value) {
    try {
      return JSON.stringify(value, null, 2);
    } catch (_) {
      return String(value);
    }
  }

  /** "draft_reply" → "Draft reply" */
  const humanize = R.humanize;

  function relativeTime(value) {
    if (!value) return "";
    const t = typeof value === "number" ? (value < 1e12 ? value * 1000 : value) : Date.parse(value);
    if (!Number.isFinite(t)) return "";
    const s = Math.round((Date.now() - t) / 1000);
    if (s < 45) return "just now";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    if (s < 7 * 86400) return Math.round(s / 86400) + " d ago";
    return new Date(t).toLocaleDateString();
  }

  /** Toast notifications (errors and confirmations). */
  function toast(message, kind = "error") {
    const node = el("div", { class: "toast toast-" + kind, role: kind === "error" ? "alert" : "status" }, message);
    $("toasts").append(node);
    setTimeout(() => node.classList.add("toast-out"), 4500);
    setTimeout(() => node.remove(), 5000);
  }

  // ======================================================================== HTTP API

  const params = new URLSearchParams(location.search);
  const token = takeToken();

  /**
   * The bearer token for `[auth] mode = "token"` servers: given once as `#token=…` in the page
   * URL (a fragment never reaches the server), remembered in localStorage, and removed from the
   * address bar at once so it does not stay in the history or get copied along with a link.
   * (`?token=…` is accepted and removed the same way, but a query string is sent to the server:
   * prefer the fragment.) It then travels only in the Authorization header and the socket's
   * auth frame.
   */
  function takeToken() {
    const url = new URL(location.href);
    const hash = new URLSearchParams(url.hash.slice(1));
    const given = hash.get("token") || url.searchParams.get("token");
    if (hash.has("token") || url.searchParams.has("token")) {
      hash.delete("token");
      url.searchParams.delete("token");
      url.hash = hash.toString();
      history.replaceState(null, "", url);
    }
    if (given) safeStorage(() => localStorage.setItem("parley.token", given));
    return given || safeStorage(() => localStorage.getItem("parley.token"));
  }

  function safeStorage(fn) {
    try {
      return fn();
    } catch (_) {
      return null;
    }
  }

  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message || code);
      this.status = status;
      this.code = code;
      this.details = details;
    }
  }

  /** fetch JSON from the server; throws ApiError (status 0 = the server cannot be reached). */
  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = "Bearer " + token;
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      throw new ApiError(0, "unreachable", "Cannot reach the server");
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      if (res.ok) throw new ApiError(res.status, "bad_response", "The server sent something that is not JSON");
    }
    if (!res.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(res.status, e.code || "http_" + res.status, e.message || res.statusText, e.details);
    }
    return data;
  }

  // ======================================================================== state

  const state = {
    assistants: [],
    assistant: null, // the selected assistant object
    builtinModel: false, // from GET /api/info
    conversations: [],
    conversationTitle: null,
    renaming: null, // id of the conversation being renamed inline
    running: false,
    sending: false,
    view: null, // what the chat shows for the current conversation (see resetView)
    details: new Map(), // assistant id -> GET /api/assistants/{id} (pause points, graph)
    maxMessageChars: 32768, // from GET /api/info when it says (config default otherwise)
    filterAll: true, // the sidebar lists every assistant's conversations
  };

  const client = new window.ParleyClient({ token: token || undefined });
  const graph = window.ParleyGraph.create(document.getElementById("graph-body"));
  window.parleyApp = { client, state };

  // ======================================================================== connection pill

  const CONN_LABELS = { connecting: "Connecting…", open: "Connected", reconnecting: "Reconnecting…", closed: "Disconnected" };

  client.on("connection", ({ state: s }) => {
    const pill = $("conn-state");
    pill.dataset.state = s;
    pill.textContent = CONN_LABELS[s] || s;
    pill.title = "WebSocket connection: " + s;
    // The server is back after the page could not load: load what is missing.
    if (s === "open" && booted && state.assistants.length === 0) retryLoad();
  });

  client.on("error", (err) => {
    toast((err && err.message) || String(err));
  });

  // ======================================================================== assistants

  async function loadAssistants() {
    const select = $("assistant-select");
    try {
      const data = await api("/api/assistants");
      const list = Array.isArray(data) ? data : (data && data.items) || [];
      state.assistants = list;
      $("server-banner").hidden = true;
      select.replaceChildren(...list.map((a) => el("option", { value: a.id }, a.title || a.id)));
      select.disabled = list.length === 0;
      if (list.length === 0) {
        select.append(el("option", { value: "" }, "No assistants"));
        showUnavailable("No assistants are installed", "Add assistant files to the assistants directory.");
        return false;
      }
      const wanted = params.get("assistant") || safeStorage(() => localStorage.getItem("parley.assistant"));
      const initial = list.find((a) => a.id === wanted) || list[0];
      selectAssistant(initial.id, { keepConversation: true });
      return true;
    } catch (err) {
      select.replaceChildren(el("option", { value: "" }, "Unavailable"));
      select.disabled = true;
      $("server-banner").hidden = false;
      $("server-banner-detail").textContent =
        err.status === 0
          ? "Check that parley serve is running, then retry."
          : err.status === 401
            ? "This server needs an access token: open the page as /#token=YOUR_TOKEN (it is kept in this browser)."
            : `GET /api/assistants answered HTTP ${err.status}: ${err.message}`;
      showUnavailable("Cannot reach the server", "The assistants could not be loaded. Retry when the server is up.");
      $("conversation-empty").hidden = false;
      $("conversation-empty").textContent = "Cannot reach the server.";
      $("args-hint").textContent = "Shown once the assistants are loaded.";
      return false;
    }
  }

  async function loadInfo() {
    try {
      const info = await api("/api/info");
      state.builtinModel = !!(info && info.builtinModel);
      if (info && Number.isFinite(info.maxMessageChars)) state.maxMessageChars = info.maxMessageChars;
      updateComposer();
    } catch (_) {
      state.builtinModel = false; // 404 or older server: no notice unless the assistant says so
    }
    updateBuiltinNotice();
  }

  function updateBuiltinNotice() {
    $("builtin-notice").hidden = !(state.builtinModel || (state.assistant && state.assistant.builtinModel));
  }

  /** Switch the page to an assistant: header, welcome, args form, conversation list. */
  function selectAssistant(id, { keepConversation = false } = {}) {
    const assistant = state.assistants.find((a) => a.id === id);
    if (!assistant) return;
    state.assistant = assistant;
    client.assistant = assistant.id;
    $("assistant-select").value = assistant.id;
    safeStorage(() => localStorage.setItem("parley.assistant", assistant.id));
    updateBuiltinNotice();
    $("chat-subtitle").textContent = assistant.description || "";
    renderArgsForm(assistant.inputArgs || []);
    if (!keepConversation) startNewConversation();
    else renderEmptyState();
    loadConversations();
    updateClaimPanel();
    graph.setDefinition(null);
    loadDetail(assistant.id);
  }

  /** The assistant's details: its pause points (does it use the page form?) and its graph. */
  async function loadDetail(id) {
    try {
      const d = state.details.get(id) || (await api("/api/assistants/" + encodeURIComponent(id)));
      state.details.set(id, d);
      if (!state.assistant || state.assistant.id !== id) return;
      updateClaimPanel();
      graph.setDefinition(d.graph || null);
    } catch (_) {
      /* the page works without it: no graph definition, the form stays as it was */
    }
  }

  /** The sample form is shown when the assistant can ask for it, or while it waits. */
  function updateClaimPanel() {
    const d = state.assistant && state.details.get(state.assistant.id);
    const usesPage = !!(d && (d.pausePoints || []).some((p) => /\(page_action\)/.test(p)));
    $("claim-panel").hidden = !(usesPage || claim.isWaiting());
  }

  $("assistant-select").addEventListener("change", (e) => selectAssistant(e.target.value));

  // ======================================================================== conversations

  let listRefreshTimer = null;
  // Bumped by every list load and by every delete: a load answers only if nothing newer
  // happened meanwhile (a list fetched before a delete must not bring the deleted one back).
  let listGeneration = 0;

  /** Reload the sidebar soon (coalesces bursts of triggers). */
  function refreshConversationsSoon(delay = 250) {
    clearTimeout(listRefreshTimer);
    listRefreshTimer = setTimeout(loadConversations, delay);
  }

  async function loadConversations() {
    if (!state.assistant) return;
    const q = new URLSearchParams({ limit: "50" });
    if (!state.filterAll) q.set("assistant", state.assistant.id);
    const generation = ++listGeneration;
    try {
      const data = await api("/api/conversations?" + q);
      if (generation !== listGeneration) return;
      state.conversations = (data && data.items) || (Array.isArray(data) ? data : []);
      renderConversationList();
    } catch (err) {
      if (generation !== listGeneration) return;
      state.conversations = [];
      renderConversationList(err.status === 0 ? "Cannot reach the server." : err.message);
    }
  }

  const STATUS_LABELS = { running: "Running", paused: "Waiting", failed: "Failed", cancelled: "Stopped" };

  function renderConversationList(errorText) {
    if (state.renaming) return; // redrawn when the inline edit ends
    const list = $("conversation-list");
    const current = client.conversationId;
    // Keep the keyboard focus on the same conversation across a redraw.
    const focused = list.contains(document.activeElement) ? document.activeElement.closest(".conversation-item") : null;
    const focusId = focused && focused.dataset.id;
    list.replaceChildren(...state.conversations.map((c) => conversationItem(c, c.id === current)));
    if (focusId) {
      const again = list.querySelector(`.conversation-item[data-id="${CSS.escape(focusId)}"] .conv-open`);
      if (again) again.focus();
    }
    const waiting = state.conversations.filter((c) => c.status === "paused").length;
    $("waiting-count").hidden = waiting === 0;
    $("waiting-count").textContent = waiting + " waiting";
    const empty = $("conversation-empty");
    empty.hidden = state.conversations.length > 0;
    empty.textContent = errorText || "No conversations yet.";
    const mine = state.conversations.find((c) => c.id === current);
    if (mine) setChatTitle(mine.title);
  }

  function conversationItem(c, active) {
    const status = STATUS_LABELS[c.status];
    const other = c.assistant && state.assistant && c.assistant !== state.assistant.id;
    const owner = other ? state.assistants.find((a) => a.id === c.assistant) : null;
    const open = el(
      "button",
      {
        type: "button",
        class: "conv-open",
        onclick: () => openConversation(c.id, c.assistant),
        "aria-current": active ? "true" : null,
        "aria-keyshortcuts": "F2 Delete",
        title: (c.title || "Untitled") + " — F2 renames, Delete deletes",
      },
      el("span", { class: "conv-title", dir: "auto" }, c.title || "Untitled"),
      el(
        "span",
        { class: "conv-meta" },
        relativeTime(c.updatedAt),
        other ? el("span", { class: "conv-assistant" }, (owner && owner.title) || c.assistant) : null,
        status ? el("span", { class: "conv-status conv-status-" + c.status, "data-testid": c.status === "paused" ? "waiting-badge" : null }, status) : null
      )
    );
    // One Tab stop per conversation: the rename and delete buttons are reached with the mouse,
    // or from the keyboard with F2 and Delete on the conversation.
    const rename = el(
      "button",
      { type: "button", class: "icon-btn icon-btn-small", "data-testid": "rename-button", "aria-label": "Rename", title: "Rename (F2)", tabindex: "-1" },
      icon("pencil")
    );
    const del = el(
      "button",
      { type: "button", class: "icon-btn icon-btn-small icon-btn-danger", "data-testid": "delete-button", "aria-label": "Delete", title: "Delete (Delete key)", tabindex: "-1" },
      icon("trash")
    );
    open.addEventListener("keydown", (e) => {
      if (e.key === "F2") {
        e.preventDefault();
        beginRename(item, c);
      } else if (e.key === "Delete") {
        e.preventDefault();
        deleteConversation(c);
      }
    });
    const item = el(
      "li",
      { class: "conversation-item" + (active ? " active" : ""), "data-testid": "conversation-item", dataset: { id: c.id } },
      open,
      el("span", { class: "conv-actions" }, rename, del)
    );
    rename.addEventListener("click", () => beginRename(item, c));
    del.addEventListener("click", () => deleteConversation(c));
    return item;
  }

  /** Inline rename: Enter or blur saves (PATCH), Escape cancels. */
  function beginRename(item, c) {
    const input = el("input", {
      type: "text",
      class: "conv-rename",
      value: c.title || "",
      "aria-label": "New title",
      "data-testid": "rename-input",
      maxlength: "200",
    });
    let done = false;
    state.renaming = c.id;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      const wasFocused = document.activeElement === input;
      if (save && title && title !== c.title) {
        try {
          await api("/api/conversations/" + encodeURIComponent(c.id), { method: "PATCH", body: { title } });
          c.title = title;
          // The list may have been reloaded while the field was open: update that copy too.
          for (const x of state.conversations) if (x.id === c.id) x.title = title;
          // …and a reload that was already on its way may bring the old title: load again.
          refreshConversationsSoon();
        } catch (err) {
          toast("Rename failed: " + err.message);
        }
      }
      state.renaming = null;
      renderConversationList();
      if (wasFocused) {
        const button = document.querySelector(`.conversation-item[data-id="${CSS.escape(c.id)}"] .conv-open`);
        if (button) button.focus();
      }
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        finish(true);
      } else if (e.key === "Escape") {
        e.stopPropagation(); // do not close the drawer too
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
    item.classList.add("renaming");
    item.replaceChildren(input);
    input.focus();
    input.select();
  }

  async function deleteConversation(c) {
    if (!window.confirm(`Delete “${c.title || "Untitled"}”? Its messages and history are removed for good.`)) return;
    try {
      await api("/api/conversations/" + encodeURIComponent(c.id), { method: "DELETE" });
      listGeneration++; // a list fetched before the delete is stale
      if (c.id === client.conversationId) startNewConversation();
      state.conversations = state.conversations.filter((x) => x.id !== c.id);
      renderConversationList();
      toast("Conversation deleted", "ok");
    } catch (err) {
      toast("Delete failed: " + err.message);
    }
  }

  /** Open an old conversation: its whole history replays as events (subscribe since 0). */
  async function openConversation(id, assistantId) {
    closeDrawers();
    if (assistantId && state.assistant && assistantId !== state.assistant.id && state.assistants.some((a) => a.id === assistantId)) {
      selectAssistant(assistantId, { keepConversation: true });
    }
    resetView();
    state.view.replaying = true;
    loadMessageTimes(id);
    client.open(id).catch((err) => {
      if (err.code === "conversation_not_found") {
        toast("That conversation no longer exists");
        startNewConversation();
        loadConversations();
      }
    });
    setHash(id);
    claim.show(id);
    const known = state.conversations.find((c) => c.id === id);
    setChatTitle(known ? known.title : "Conversation");
    renderConversationList();
    // The stored args of the conversation prefill the form (best effort).
    try {
      const details = await api("/api/conversations/" + encodeURIComponent(id));
      if (client.conversationId !== id || !details) return;
      if (details.title) setChatTitle(details.title);
      if (details.args && typeof details.args === "object") fillArgsForm(details.args);
    } catch (_) {
      /* the chat still works without the details */
    }
  }

  function startNewConversation() {
    client.newConversation();
    resetView();
    claim.show(null);
    setHash(null);
    setChatTitle(null);
    renderConversationList();
    $("message-input").focus({ preventScroll: true });
  }

  function setChatTitle(title) {
    state.conversationTitle = title || null;
    $("chat-title").textContent = title || "New conversation";
    $("chat-title").title = title || "";
    claim.refreshTitle();
  }

  function setHash(id) {
    const url = new URL(location.href);
    url.hash = id ? "c=" + encodeURIComponent(id) : "";
    history.replaceState(null, "", url);
  }

  function hashConversation() {
    const m = /^#c=(.+)$/.exec(location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  $("conversation-filter").addEventListener("change", (e) => {
    state.filterAll = e.target.value === "all";
    loadConversations();
  });

  $("new-conversation").addEventListener("click", () => {
    closeDrawers();
    startNewConversation();
  });

  // A conversation created by a send becomes current: reflect it in the URL and the list.
  client.on("conversation", ({ conversationId }) => {
    if (conversationId) setHash(conversationId);
    claim.show(conversationId);
  });

  // ======================================================================== input args form (args.js)

  const argsForm = window.ParleyArgs.create(
    { $, el, humanize, prettyJson },
    { state, updatePanelDot: (...x) => updatePanelDot(...x), openPanel: () => openPanel() }
  );
  const { renderArgsForm, collectArgs, fillArgsForm, showFieldErrors, showServerArgErrors } = argsForm;

  // ======================================================================== chat rendering

  /**
   * The view of the current conversation. Everything in the chat is derived from events; the
   * maps below let later events (deltas, step ends, answers) update what earlier ones drew.
   */
  function resetView() {
    state.view = {
      seq: 0, // last seq rendered: rendering is idempotent by seq
      messages: new Map(), // messageId -> {node, text}
      run: null, // the latest run: {progress, log, logBody, tools, reasoning, counts}
      steps: new Map(), // stepName -> its latest progress item (a paused step ends in a later run)
      cards: new Map(), // interruptId -> action card controller
      pageNotes: new Map(), // interruptId -> note element
      runStartSeq: 0, // seq of the latest RUN_STARTED (which run answered a card)
      pause: null, // the open interrupt of this conversation, if any: the typed-answer rule
      times: new Map(), // messageId -> createdAt (from the stored messages, for a replay)
    };
    graph.reset();
    const chat = $("chat");
    chat.replaceChildren($("empty-state"));
    pinned = true;
    lastScrollTop = 0;
    setRunning(false);
    renderEmptyState();
    updateComposer();
  }

  /** Welcome message and prologue chips, shown while the conversation is empty. */
  function renderEmptyState() {
    const a = state.assistant;
    const box = $("empty-state");
    $("empty-title").textContent = a ? a.title || a.id : "Parley";
    $("empty-description").textContent = a ? a.description || "" : "";
    const welcome = $("welcome");
    welcome.textContent = (a && a.welcomeMessage) || "";
    welcome.hidden = !(a && a.welcomeMessage);
    const prologues = $("prologues");
    prologues.replaceChildren(
      ...((a && a.prologues) || []).map((p) =>
        el("button", { type: "button", class: "chip", "data-testid": "prologue", onclick: () => sendText(p) }, p)
      )
    );
    box.classList.remove("unavailable");
    updateEmptyState();
  }

  function showUnavailable(title, text) {
    const box = $("empty-state");
    box.classList.add("unavailable");
    $("empty-title").textContent = title;
    $("empty-description").textContent = text;
    $("welcome").hidden = true;
    $("prologues").replaceChildren();
    box.hidden = false;
  }

  function updateEmptyState() {
    const box = $("empty-state");
    if (box.classList.contains("unavailable")) return;
    box.hidden = $("chat").children.length > 1;
  }

  /**
   * Auto-scroll: the chat follows new content while it is scrolled to the bottom ("pinned");
   * once the user scrolls up to read, it stays put until they scroll back down.
   */
  let pinned = true;
  let scrollPending = false;
  let lastScrollTop = 0;

  $("chat").addEventListener("scroll", () => {
    const chat = $("chat");
    if (chat.scrollTop < lastScrollTop - 4) pinned = false; // the user scrolled up
    else if (chat.scrollHeight - chat.scrollTop - chat.clientHeight < 80) pinned = true;
    lastScrollTop = chat.scrollTop;
  });

  function keepPinned() {
    if (!pinned || scrollPending) return;
    scrollPending = true;
    requestAnimationFrame(() => {
      scrollPending = false;
      const chat = $("chat");
      chat.scrollTop = chat.scrollHeight;
      lastScrollTop = chat.scrollTop;
    });
  }

  /** Append to the chat (following it down if pinned). */
  function append(node) {
    $("chat").append(node);
    updateEmptyState();
    keepPinned();
    return node;
  }

  function setRunning(running) {
    state.running = running;
    $("stop-button").hidden = !running;
    $("send-button").hidden = running;
    $("chat").setAttribute("aria-busy", running ? "true" : "false");
    updateComposer();
  }

  /** Every event of the current conversation, live or replayed, goes through here once. */
  client.on("*", (event, meta) => {
    const view = state.view;
    if (!view || meta.conversationId !== client.conversationId) return;
    if (meta.seq <= view.seq) return;
    view.seq = meta.seq;
    const render = RENDERERS[event.type];
    if (render) render(event, meta, view);
  });

  const RENDERERS = {
    RUN_STARTED(ev, meta, view) {
      setRunning(true);
      answerOpenInterrupts(view, meta.seq);
      view.runStartSeq = meta.seq;
      view.pause = null;
      view.run = newRun(ev.runId);
      updateComposer();
    },
    STEP_STARTED(ev, meta, view) {
      stepStarted(view, ev);
      graph.step(ev.stepName, ev.nodeType, "running");
      keepPinned();
    },
    STEP_FINISHED(ev, meta, view) {
      const item = view.steps.get(ev.stepName);
      if (item && !item.classList.contains("done")) setStepState(view, item, "done");
      graph.step(ev.stepName, ev.nodeType, "done");
      // The end of an interaction node tells which button answered it (also in a replay) —
      // only to the card that this run answered: an older card of the same node keeps its own.
      for (const card of view.cards.values()) {
        if (card.nodeId === ev.stepName && card.seq < meta.seq && (!card.closedSeq || card.closedSeq === view.runStartSeq)) {
          card.answered(ev.output && ev.output.action, ev.output && ev.output.value);
        }
      }
      for (const [id, note] of view.pageNotes) {
        if (note.nodeId === ev.stepName && note.seq < meta.seq) markPageNoteDone(view, id);
      }
    },
    TEXT_MESSAGE_START(ev, meta, view) {
      messageBubble(view, ev.messageId, ev.role);
    },
    TEXT_MESSAGE_CONTENT(ev, meta, view) {
      const m = messageBubble(view, ev.messageId, ev.role);
      m.text.appendData(ev.delta || "");
      keepPinned();
    },
    TEXT_MESSAGE_END(ev, meta, view) {
      const m = messageBubble(view, ev.messageId, ev.role);
      m.node.classList.remove("streaming");
      if (m.role === "assistant") renderMarkdown(m);
    },
    REASONING_MESSAGE_CONTENT(ev, meta, view) {
      const run = ensureLog(view);
      let r = run.reasoning.get(ev.messageId);
      if (!r) {
        r = document.createTextNode("");
        run.logBody.append(el("div", { class: "log-entry log-reasoning" }, el("span", { class: "log-label" }, "Reasoning"), el("p", {}, r)));
        run.reasoning.set(ev.messageId, r);
      }
      r.appendData(ev.delta || "");
    },
    TOOL_CALL_START(ev, meta, view) {
      toolEntry(view, ev);
      countLog(view, "tool");
    },
    TOOL_CALL_ARGS(ev, meta, view) {
      toolEntry(view, ev).args.appendData(ev.delta || "");
    },
    TOOL_CALL_END(ev, meta, view) {
      toolEntry(view, ev).node.classList.add("called");
    },
    TOOL_CALL_RESULT(ev, meta, view) {
      const t = toolEntry(view, ev);
      let content = ev.content;
      if (typeof content === "string") {
        try {
          content = prettyJson(JSON.parse(content));
        } catch (_) {
          /* plain text result */
        }
      } else content = prettyJson(content);
      t.result.textContent = content;
      t.result.hidden = false;
      t.node.classList.add("has-result");
    },
    CUSTOM(ev, meta, view) {
      if (ev.name === "card") append(dataCard(ev.value));
      else {
        const run = ensureLog(view);
        run.logBody.append(
          el("div", { class: "log-entry" }, el("span", { class: "log-label" }, ev.name || "custom"), el("pre", {}, prettyJson(ev.value)))
        );
      }
    },
    RUN_FINISHED(ev, meta, view) {
      setRunning(false);
      const outcome = ev.outcome || {};
      finishProgress(view, outcome.type === "interrupt" ? " waiting" : "");
      graph.settle(outcome.type === "interrupt" ? "waiting" : "done");
      if (outcome.type === "interrupt") {
        for (const interrupt of outcome.interrupts || []) renderInterrupt(view, interrupt, meta);
        const open = (outcome.interrupts || []).find((i) => i && i.id);
        view.pause = open ? { interrupt: open, seq: meta.seq } : null;
      } else if (outcome.result && Object.keys(outcome.result).length && !echoesReply(view, outcome.result)) {
        // The run's output, laid out from the assistant's output args.
        append(R.resultCard(outcome.result, (state.assistant && state.assistant.outputArgs) || []));
      }
      updateComposer();
      refreshConversationsSoon();
    },
    RUN_ERROR(ev, meta, view) {
      setRunning(false);
      const cancelled = ev.code === "cancelled";
      finishProgress(view, cancelled ? " stopped" : " failed");
      graph.settle("done");
      view.pause = null;
      append(
        el(
          "div",
          { class: "run-error" + (cancelled ? " run-stopped" : ""), "data-testid": "run-error", role: "status", dataset: { code: ev.code || "" } },
          cancelled ? "Stopped" : el("span", {}, el("code", {}, ev.code || "error"), " ", ev.message || "The run failed.")
        )
      );
      refreshConversationsSoon();
    },
  };

  /** A result that only repeats the reply just shown (one text field) needs no card. */
  function echoesReply(view, result) {
    const values = Object.values(result);
    if (values.length !== 1 || typeof values[0] !== "string") return false;
    const said = Array.from(view.messages.values()).filter((m) => m.role === "assistant").map((m) => m.text.data.trim());
    return said.includes(values[0].trim());
  }

  function newRun(runId) {
    return { id: runId || null, progress: null, log: null, tools: new Map(), reasoning: new Map() };
  }

  function ensureRun(view) {
    if (!view.run) view.run = newRun(null);
    return view.run;
  }

  const STEP_STATE_TEXT = { running: "running…", done: "done", waiting: "waiting for you", stopped: "stopped", failed: "failed" };

  /**
   * Progress: one line per run ("3 steps · Draft — running…") that opens into the list of its
   * steps, by title, with a repeated step shown once with a count ("Review × 15").
   */
  function stepStarted(view, ev) {
    const run = ensureRun(view);
    if (!run.progress) {
      run.progressSummary = el("summary", { class: "step-summary" });
      run.progressList = el("ol", { class: "step-list" });
      run.progress = append(
        el("details", { class: "step-progress", "data-testid": "step-progress" }, run.progressSummary, run.progressList)
      );
      run.stepCount = 0;
    }
    run.stepCount++;
    let item = run.progressList.querySelector(`.step[data-step="${CSS.escape(ev.stepName)}"]`);
    if (!item) {
      item = el(
        "li",
        { class: "step", dataset: { step: ev.stepName, count: "0" } },
        el("span", { class: "step-name" }, humanize(ev.stepName)),
        ev.nodeType ? el("span", { class: "step-type" }, R.humanize(ev.nodeType)) : null,
        el("span", { class: "step-times" }),
        el("span", { class: "step-state" })
      );
      run.progressList.append(item);
    }
    const n = Number(item.dataset.count) + 1;
    item.dataset.count = String(n);
    item.querySelector(".step-times").textContent = n > 1 ? "× " + n : "";
    view.steps.set(ev.stepName, item);
    setStepState(view, item, "running");
  }

  function setStepState(view, item, st) {
    item.classList.remove("running", "waiting", "done", "stopped", "failed");
    item.classList.add(st);
    item.querySelector(".step-state").textContent = STEP_STATE_TEXT[st] || st;
    const run = view.run;
    if (!run || !run.progressSummary || !run.progressList.contains(item)) return;
    const kinds = run.progressList.children.length;
    const name = item.querySelector(".step-name").textContent;
    run.progressSummary.textContent = `${kinds} step${kinds === 1 ? "" : "s"} · ${name} — ${STEP_STATE_TEXT[st] || st}`;
    run.progressSummary.dataset.state = st;
  }

  /** The run ended (or paused): steps still marked running become `label` ("" or " waiting"). */
  function finishProgress(view, label = "") {
    const run = view.run;
    if (!run || !run.progress) return;
    for (const item of run.progressList.querySelectorAll(".step.running")) setStepState(view, item, label.trim() || "done");
    if (!label) {
      // Finished: the line sums the run up instead of naming its last step.
      const n = run.stepCount;
      run.progressSummary.textContent = `${n} step${n === 1 ? "" : "s"} · finished`;
      run.progressSummary.dataset.state = "done";
    }
  }

  /** A user or assistant bubble, created on first sight of its messageId. */
  function messageBubble(view, messageId, role) {
    const key = messageId || "anon-" + view.seq;
    let m = view.messages.get(key);
    if (m) return m;
    const r = role === "user" ? "user" : "assistant";
    const text = document.createTextNode("");
    const bubble = el("div", { class: "bubble", dir: "auto" }, text);
    const when = view.times.get(key) || (view.replaying ? null : new Date().toISOString());
    const time = el("time", { class: "message-time" });
    setTime(time, when);
    m = { node: null, text, bubble, role: r, time };
    const node = el(
      "div",
      { class: "message message-" + r + (r === "assistant" ? " streaming" : ""), "data-testid": "message-" + r, dataset: { messageId: key } },
      bubble,
      el("div", { class: "message-meta" }, time, R.copyButton(() => m.text.data, r === "user" ? "Copy your message" : "Copy reply"))
    );
    m.node = node;
    view.messages.set(key, m);
    append(node);
    return m;
  }

  /** The time shown under a message (from CSS, so it is not part of the message's text). */
  function setTime(time, iso) {
    const t = iso ? new Date(iso) : null;
    if (!t || !Number.isFinite(t.getTime())) return;
    time.setAttribute("datetime", t.toISOString());
    time.dataset.label = t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    time.title = t.toLocaleString();
  }

  /** A finished assistant message: its Markdown, sanitised; the source stays in data-source. */
  function renderMarkdown(m) {
    const source = m.text.data;
    m.bubble.dataset.source = source;
    m.bubble.replaceChildren(R.markdown(source));
    m.bubble.classList.add("markdown");
    keepPinned();
  }

  /** The stored messages' times, for the bubbles of a replayed conversation. */
  async function loadMessageTimes(id) {
    try {
      const data = await api("/api/conversations/" + encodeURIComponent(id) + "/messages?limit=100");
      const view = state.view;
      if (!view || client.conversationId !== id) return;
      for (const msg of (data && data.items) || []) {
        view.times.set(msg.id, msg.createdAt);
        const shown = view.messages.get(msg.id);
        if (shown && !shown.time.dataset.label) setTime(shown.time, msg.createdAt);
      }
    } catch (_) {
      /* no times: the bubbles still show */
    }
    if (state.view && client.conversationId === id) state.view.replaying = false;
  }

  /** The collapsible log of a run: tool calls, reasoning, other custom events, the result. */
  function ensureLog(view) {
    const run = ensureRun(view);
    if (!run.log) {
      run.logSummary = el("summary", {}, "Log");
      run.logBody = el("div", { class: "log-body" });
      run.log = append(el("details", { class: "run-log", "data-testid": "run-log" }, run.logSummary, run.logBody));
      run.counts = { tool: 0 };
    }
    return run;
  }

  function countLog(view, kind) {
    const run = ensureLog(view);
    run.counts[kind] = (run.counts[kind] || 0) + 1;
    const n = run.counts.tool;
    run.logSummary.textContent = n ? `Log · ${n} tool call${n === 1 ? "" : "s"}` : "Log";
  }

  function toolEntry(view, ev) {
    const run = ensureLog(view);
    let t = run.tools.get(ev.toolCallId);
    if (t) return t;
    const args = document.createTextNode("");
    const result = el("pre", { class: "tool-result", hidden: true });
    const node = el(
      "div",
      { class: "log-entry log-tool" },
      el("span", { class: "log-label" }, "Tool"),
      el("code", { class: "tool-name" }, ev.toolCallName || "tool"),
      el("pre", { class: "tool-args" }, args),
      result
    );
    run.logBody.append(node);
    t = { node, args, result };
    run.tools.set(ev.toolCallId, t);
    return t;
  }

  /** A `reply` node's data, shown as a small card: a title/text if it has them, then fields. */
  function dataCard(value) {
    const card = el("div", { class: "data-card", "data-testid": "data-card" });
    if (value && typeof value === "object" && !Array.isArray(value)) {
      const { title, text, ...rest } = value;
      if (title) card.append(el("div", { class: "data-card-title", dir: "auto" }, String(title)));
      if (text) card.append(el("p", { dir: "auto" }, String(text)));
      if (Object.keys(rest).length) card.append(R.kvTable(rest));
    } else {
      card.append(el("pre", {}, prettyJson(value)));
    }
    return card;
  }

  /** A new run started at `seq`: every interrupt shown before it has been answered. */
  function answerOpenInterrupts(view, seq) {
    for (const card of view.cards.values()) {
      if (card.seq < seq && !card.closedSeq) {
        card.closedSeq = seq;
        card.answered(null);
      }
    }
    for (const [id, note] of view.pageNotes) if (note.seq < seq) markPageNoteDone(view, id);
  }

  function renderInterrupt(view, interrupt, meta) {
    if (!interrupt || !interrupt.id) return;
    if (interrupt.reason === "page_action") renderPageNote(view, interrupt, meta);
    else if (!view.cards.has(interrupt.id)) view.cards.set(interrupt.id, actionCard(interrupt, meta));
  }

  // ======================================================================== action cards (cards.js)

  const { actionCard } = window.ParleyCards.create({ el, humanize }, { client, append: (n) => append(n) });

  // ======================================================================== Action in Page

  /** The chat's note for a page action: "Waiting for you on the page: …". */
  function renderPageNote(view, interrupt, meta) {
    if (view.pageNotes.has(interrupt.id)) return;
    const supported = interrupt.action === "fill_claim_form";
    const text = interrupt.message || interrupt.prompt || "The assistant asked the page to run “" + interrupt.action + "”.";
    const node = el(
      "div",
      { class: "system-note", "data-testid": "page-action-note", role: "status", dataset: { interruptId: interrupt.id } },
      el("span", { class: "system-note-text" }, "Waiting for you on the page: " + text),
      supported
        ? el("button", { type: "button", class: "btn btn-small", onclick: () => revealClaimForm() }, "Show form")
        : el("span", { class: "system-note-sub" }, "This page cannot run “" + interrupt.action + "”; reply in the chat to continue.")
    );
    view.pageNotes.set(interrupt.id, { node, nodeId: interrupt.nodeId, seq: meta.seq, supported });
    append(node);
  }

  /** The page action was answered: by the page (the form), or — when this page cannot run it,
   * or a typed message answered it — in the chat. */
  function markPageNoteDone(view, id, how) {
    const note = view.pageNotes.get(id);
    if (!note || note.done) return;
    note.done = true;
    note.node.classList.add("done");
    const byPage = how === "page" || (how === undefined && note.supported && !note.typed);
    note.node.querySelector(".system-note-text").textContent = byPage ? "✓ Done on the page" : "✓ Answered in the chat";
    const sub = note.node.querySelector(".system-note-sub");
    if (sub) sub.remove();
    const b = note.node.querySelector("button");
    if (b) b.remove();
  }

  /** The sample business form (claim.js): each request belongs to its conversation. */
  const claim = window.ParleyClaim.create({
    current: () => client.conversationId,
    titleOf: (id) => (id === client.conversationId && state.conversationTitle) || ((state.conversations.find((c) => c.id === id) || {}).title),
    onChange: () => {
      updatePanelDot();
      updateClaimPanel();
    },
    reveal: () => revealClaimForm(),
    afterSubmit: () => {
      // On a phone the form is a drawer over the chat: close it so the reply can be seen.
      if (medium.matches) closeDrawers();
    },
  });
  client.onPageAction("fill_claim_form", (params, interrupt, ctx) => claim.request(params, interrupt, ctx));

  function revealClaimForm() {
    openPanel();
    const panel = $("claim-panel");
    panel.scrollIntoView({ behavior: "smooth", block: "start" });
    const first = $("claim-employee");
    // Focus the first field once the panel is in view — unless the person is already typing
    // in the form (stealing focus mid-word would send their keys to another field).
    setTimeout(() => {
      if (!$("claim-form").contains(document.activeElement)) first.focus({ preventScroll: true });
    }, 250);
  }

  // ======================================================================== composer

  const input = $("message-input");
  const HINT = "Enter to send · Shift+Enter for a new line";

  /**
   * The typed-answer rule, made visible before it happens: while the conversation waits at a
   * pause, the composer says what a message will do there — at a card it is a reply, at a page
   * action it is the action's value (in place of the page's own answer), and a tool
   * confirmation cannot be answered by a message (its buttons answer it).
   */
  function pauseTarget() {
    const view = state.view;
    const pause = view && view.pause;
    if (!pause || state.running) return null;
    const i = pause.interrupt;
    if (i.reason === "page_action") {
      const what = i.action === "fill_claim_form" ? "Expense claim form" : i.message || i.prompt || humanize(i.action || "page action");
      return { reason: i.reason, canSend: true, text: `Your message will answer: ${what} — it is sent in place of the page's answer.` };
    }
    if (i.reason === "tool_confirmation") {
      return { reason: i.reason, canSend: false, text: `Answer the confirmation above first: ${R.toolSentence(i)} Approve or Reject.` };
    }
    return { reason: i.reason || "conversation_action", canSend: true, text: `Your message will answer: “${i.message || "the card above"}” (as a reply).` };
  }

  /** Composer state: the pause target line, the character counter, the send button. */
  function updateComposer() {
    const target = pauseTarget();
    const line = $("composer-target");
    line.hidden = !target;
    line.textContent = target ? target.text : "";
    line.dataset.reason = target ? target.reason : "";
    const len = input.value.length;
    const max = state.maxMessageChars;
    const count = $("char-count");
    count.hidden = len < max * 0.8;
    count.textContent = `${len.toLocaleString()} / ${max.toLocaleString()}`;
    count.classList.toggle("over", len > max);
    const blocked = (target && !target.canSend) || len > max;
    $("send-button").disabled = blocked || state.sending;
    $("send-button").querySelector(".btn-label").textContent = target && target.canSend ? "Answer" : "Send";
    $("send-button").setAttribute("aria-label", target && target.canSend ? "Send as the answer" : "Send");
  }

  function hint(text, warn) {
    const h = $("composer-hint");
    h.textContent = text || HINT;
    h.classList.toggle("hint-warn", !!warn);
  }

  function autoGrow() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 200) + "px";
  }

  /** Send a message (typed or a prologue) with the current args. */
  async function sendText(text) {
    const content = String(text || "").trim();
    if (!content || state.sending) return;
    const target = pauseTarget();
    if (target && !target.canSend) {
      hint(target.text, true);
      return;
    }
    if (content.length > state.maxMessageChars) {
      hint(`The message is too long: at most ${state.maxMessageChars.toLocaleString()} characters.`, true);
      return;
    }
    hint(null);
    if (!state.assistant) {
      toast("No assistant is available — cannot reach the server.");
      return;
    }
    const args = collectArgs();
    if (!args.ok) {
      showFieldErrors(args.errors, "Fix the input args before sending.");
      return;
    }
    state.sending = true;
    updateComposer();
    const typed = input.value;
    if (typed.trim() === content) {
      input.value = "";
      autoGrow();
    }
    try {
      await client.sendMessage(content, {
        args: args.values,
        assistant: state.assistant.id,
        newConversation: !client.conversationId,
      });
      // A page action answered by this message: its note says so (not "done on the page").
      const view = state.view;
      if (target && target.reason === "page_action" && view && view.pause) {
        const note = view.pageNotes.get(view.pause.interrupt.id);
        if (note) note.typed = true;
      }
      refreshConversationsSoon(0);
    } catch (err) {
      if (!input.value) {
        input.value = content; // nothing was stored: give the text back
        autoGrow();
      }
      if (err.code === "invalid_args") showServerArgErrors(err);
      else if (err.code === "conversation_busy") hint(state.running ? "The assistant is still answering — wait, or press Stop." : err.message, true);
      else toast(err.message || "Sending failed");
    } finally {
      state.sending = false;
      updateComposer();
    }
  }

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    sendText(input.value);
  });

  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (state.running) {
        hint("The assistant is still answering — wait, or press Stop.", true);
        return;
      }
      sendText(input.value);
    }
  });
  input.addEventListener("input", () => {
    autoGrow();
    updateComposer();
    if ($("composer-hint").classList.contains("hint-warn") && !state.running) hint(null);
  });

  $("stop-button").addEventListener("click", () => {
    client.cancel().catch((err) => toast(err.message));
  });

  // ======================================================================== graph view

  $("graph-button").addEventListener("click", () => {
    const d = $("graph-dialog");
    $("graph-title").textContent = "How " + ((state.assistant && state.assistant.title) || "the assistant") + " works";
    d.showModal();
    graph.render();
  });
  $("graph-close").addEventListener("click", () => $("graph-dialog").close());
  $("graph-dialog").addEventListener("click", (e) => {
    if (e.target === $("graph-dialog")) $("graph-dialog").close(); // a click on the backdrop
  });

  // ======================================================================== drawers

  const narrow = window.matchMedia("(max-width: 859px)");
  const medium = window.matchMedia("(max-width: 1179px)");

  function setDrawer(id, toggleId, open) {
    $(id).classList.toggle("open", open);
    $(toggleId).setAttribute("aria-expanded", String(open));
    const any = $("sidebar").classList.contains("open") || $("panel").classList.contains("open");
    $("scrim").hidden = !any;
  }

  function openPanel() {
    if (medium.matches) {
      setDrawer("sidebar", "sidebar-toggle", false);
      setDrawer("panel", "panel-toggle", true);
    }
  }

  function closeDrawers() {
    setDrawer("sidebar", "sidebar-toggle", false);
    setDrawer("panel", "panel-toggle", false);
  }

  /** A dot on the panel toggle when the hidden panel needs attention. */
  function updatePanelDot(argErrors) {
    const hasErrors = argErrors !== undefined ? argErrors : !!document.querySelector("#args-form [aria-invalid]");
    $("panel-dot").hidden = !(hasErrors || claim.isWaiting());
  }

  $("sidebar-toggle").addEventListener("click", () => {
    const open = !$("sidebar").classList.contains("open");
    setDrawer("panel", "panel-toggle", false);
    setDrawer("sidebar", "sidebar-toggle", open);
  });
  $("panel-toggle").addEventListener("click", () => {
    const open = !$("panel").classList.contains("open");
    setDrawer("sidebar", "sidebar-toggle", false);
    setDrawer("panel", "panel-toggle", open);
  });
  $("sidebar-close").addEventListener("click", closeDrawers);
  $("panel-close").addEventListener("click", closeDrawers);
  $("scrim").addEventListener("click", closeDrawers);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") closeDrawers();
  });
  medium.addEventListener("change", () => {
    if (!medium.matches) closeDrawers();
  });
  narrow.addEventListener("change", () => {
    if (!narrow.matches) setDrawer("sidebar", "sidebar-toggle", false);
  });

  // ======================================================================== boot

  async function boot() {
    resetView();
    client.connect();
    loadInfo();
    const ok = await loadAssistants();
    const fromHash = hashConversation();
    if (ok && fromHash) {
      // Reopen the conversation in the URL (a reload keeps you where you were).
      try {
        const details = await api("/api/conversations/" + encodeURIComponent(fromHash));
        if (details && details.assistant && details.assistant !== state.assistant.id) {
          selectAssistant(details.assistant, { keepConversation: true });
        }
      } catch (_) {
        /* open anyway; a missing conversation is reported by the subscribe */
      }
      openConversation(fromHash);
    }
  }

  let booted = false;

  async function retryLoad() {
    const ok = await loadAssistants();
    if (ok) loadInfo();
  }

  $("server-retry").addEventListener("click", retryLoad);

  boot().finally(() => (booted = true));
})();
