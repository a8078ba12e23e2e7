/*
 * parley.js — a dependency-free browser client for Parley's WebSocket protocol (GET /ws).
 *
 * Load it with a classic script tag; it defines `window.ParleyClient` (and `window.Parley`):
 *
 *   <script src="/static/parley.js"></script>
 *   <script>
 *     const client = new ParleyClient({ assistant: "expense_claim" });
 *     client.on("TEXT_MESSAGE_CONTENT", (ev, meta) => console.log(meta.seq, ev.delta));
 *     client.onPageAction("fill_claim_form", async (params) => ({ ok: true }));
 *     client.connect();
 *     client.sendMessage("I took a taxi to the airport", { args: { department: "sales" } });
 *   </script>
 *
 * Reliability, in short (see static/README.md for the full story):
 *  - every client frame carries a unique `id`; the matching `ack`/`error` settles its promise;
 *  - the client remembers the last `seq` of every subscribed conversation and drops any event
 *    with a seq it has already seen, so handlers never see an event twice;
 *  - a socket that closes without `close()` being called reconnects with exponential backoff
 *    (250 ms doubling to 8 s, with jitter) and re-subscribes every conversation with
 *    `since: lastSeq`, so nothing is lost;
 *  - frames that had not been acknowledged when the socket dropped (send, resume, cancel) are
 *    sent again after the reconnect with the SAME `id`: the server answers a repeated id with the
 *    original ack instead of applying the frame twice;
 *  - with a `token`, every new socket first sends `{"type":"auth","token":…}`; the token never
 *    goes into a URL (URLs end up in logs and browser history).
 */
(function (global) {
  "use strict";

  const BACKOFF_MIN_MS = 250;
  const BACKOFF_MAX_MS = 8000;
  /** Quiet time after the last event of a conversation before pending page actions are run. */
  const SETTLE_MS = 60;
  const HANDLED_KEY = "parley.handledInterrupts";
  const HANDLED_MAX = 500;

  /** Frames that were still un-acked when a socket dropped (and so were sent again). */
  const RESENT = new WeakSet();

  function randomId() {
    const c = global.crypto;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    return "id-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }

  /**
   * Resolve "/ws" (or any relative URL) against the page location, with ws:// or wss://.
   * (No credentials here: a token is sent in the socket's first frame, never in the URL.)
   */
  function resolveWsUrl(url) {
    const loc = global.location;
    const base = loc && /^https?:$/.test(loc.protocol) ? loc.href : "http://localhost/";
    const u = new URL(url || "/ws", base);
    if (u.protocol === "http:") u.protocol = "ws:";
    if (u.protocol === "https:") u.protocol = "wss:";
    return u.toString();
  }

  /** sessionStorage-backed set of interrupt ids whose page action has been answered. */
  function loadHandled() {
    try {
      const raw = global.sessionStorage && global.sessionStorage.getItem(HANDLED_KEY);
      const list = raw ? JSON.parse(raw) : [];
      return Array.isArray(list) ? list : [];
    } catch (_) {
      return [];
    }
  }
  function saveHandled(list) {
    try {
      if (global.sessionStorage) {
        global.sessionStorage.setItem(HANDLED_KEY, JSON.stringify(list.slice(-HANDLED_MAX)));
      }
    } catch (_) {
      /* storage full or disabled: the in-memory set still prevents double handling */
    }
  }

  class ParleyError extends Error {
    constructor(code, message, details) {
      super(message || code);
      this.name = "ParleyError";
      this.code = code;
      if (details !== undefined) this.details = details;
    }
  }

  class ParleyClient {
    /**
     * @param {object} [options]
     * @param {string} [options.url="/ws"] WebSocket URL, resolved against the page location.
     * @param {string} [options.assistant] default assistant id for new conversations.
     * @param {string} [options.token] bearer token: sent as the first frame of every socket
     *   (`{"type":"auth","token":…}`), never in the URL.
     * @param {string} [options.conversationId] start with this conversation as the current one
     *   (call `open()` to subscribe to it).
     */
    constructor(options = {}) {
      this.url = resolveWsUrl(options.url || "/ws");
      /** Bearer token for `[auth] mode = "token"` servers (see setToken). */
      this.token = options.token || null;
      this.assistant = options.assistant || null;
      this.conversationId = options.conversationId || null;
      /** The live WebSocket (null while disconnected). */
      this.socket = null;
      /** connecting | open | reconnecting | closed */
      this.state = "closed";

      this._handlers = new Map(); // event type -> Set<handler>
      this._pageActions = new Map(); // action name -> handler
      this._subs = new Map(); // conversationId -> {lastSeq, gen, resyncing}
      this._left = new Set(); // conversations unsubscribed from: their late events are ignored
      this._pending = new Map(); // frame id -> {frame, build, resolve, reject, sentGen}
      this._userClosed = true;
      this._attempt = 0;
      this._gen = 0; // socket generation, +1 per opened socket
      this._timer = null;
      // Page actions: interrupts seen but not yet run, and those already run or answered.
      this._candidates = new Map(); // interruptId -> {interrupt, conversationId, seq}
      this._inFlight = new Map(); // interruptId -> {ctrl, conversationId, nodeId, seq, done}
      this._handled = new Set(loadHandled());
      this._settleTimers = new Map(); // conversationId -> timeout

      this._onOnline = () => {
        if (this.state === "reconnecting") this._reconnectNow();
      };
      if (global.addEventListener) global.addEventListener("online", this._onOnline);
    }

    // ------------------------------------------------------------------ public API

    /** Open the socket (and keep it open until `close()`). Returns the client. */
    connect() {
      this._userClosed = false;
      if (!this.socket) this._open();
      return this;
    }

    /** Close for good: no reconnect. Pending promises are rejected with code `closed`. */
    close() {
      this._userClosed = true;
      clearTimeout(this._timer);
      this._timer = null;
      const ws = this.socket;
      this.socket = null;
      if (ws) ws.close(1000, "client closed");
      for (const entry of this._pending.values()) {
        entry.reject(new ParleyError("closed", "The client was closed"));
      }
      this._pending.clear();
      this._setState("closed");
    }

    /**
     * Register a handler. `type` is an event type (RUN_STARTED, TEXT_MESSAGE_CONTENT, …) or "*"
     * for every event — the handler gets `(event, {conversationId, seq})` — or one of the
     * client's own notifications:
     *   "connection"   ({state})
     *   "error"        (ParleyError | {code, message, ...})  — a frame error nobody awaited,
     *                                                          or a failed page action
     *   "conversation" ({conversationId})                     — the current conversation changed
     *   "ack"          (ack frame)
     * Returns a function that removes the handler.
     */
    on(type, handler) {
      if (!this._handlers.has(type)) this._handlers.set(type, new Set());
      this._handlers.get(type).add(handler);
      return () => this.off(type, handler);
    }

    off(type, handler) {
      const set = this._handlers.get(type);
      if (set) set.delete(handler);
    }

    /**
     * Send a user message. Without a current conversation (or with `newConversation: true`)
     * the server creates one and subscribes this socket; the client then remembers it as the
     * current conversation. Resolves with the ack `{conversationId, runId}`; rejects with a
     * ParleyError carrying the error frame's `code`, `message` and `details`.
     */
    sendMessage(content, options = {}) {
      const frame = { type: "send", content: String(content) };
      const targetId = options.newConversation ? null : options.conversationId || this.conversationId;
      if (targetId) {
        frame.conversationId = targetId;
        this._ensureSubscribed(targetId);
      } else {
        const assistant = options.assistant || this.assistant;
        if (assistant) frame.assistant = assistant;
        frame.newConversation = true;
        // A new conversation becomes the current one: stop listening to the previous one.
        this._leaveCurrent();
        this._setCurrent(null);
      }
      if (options.assistant && targetId) frame.assistant = options.assistant;
      if (options.args !== undefined) frame.args = options.args;
      return this._request(frame).then((ack) => {
        if (ack.conversationId) {
          this._adoptSubscription(ack.conversationId, frame);
          if (!targetId || targetId === this.conversationId) this._setCurrent(ack.conversationId);
        }
        return ack;
      });
    }

    /**
     * Answer a pending interrupt: `action` is a button name (or undefined), `value` any JSON.
     * Uses the current conversation unless `conversationId` is given.
     */
    resume(interruptId, action, value, conversationId) {
      const cid = conversationId || this.conversationId;
      if (!cid) return Promise.reject(new ParleyError("bad_request", "No conversation to resume"));
      const frame = { type: "resume", conversationId: cid, interruptId };
      if (action !== undefined && action !== null) frame.action = action;
      if (value !== undefined) frame.value = value;
      return this._request(frame).then((ack) => {
        this._markHandled(interruptId);
        return ack;
      });
    }

    /** Stop the active run of the current (or given) conversation. */
    cancel(conversationId) {
      const cid = conversationId || this.conversationId;
      if (!cid) return Promise.reject(new ParleyError("bad_request", "No conversation to cancel"));
      return this._request({ type: "cancel", conversationId: cid });
    }

    /**
     * Make `conversationId` the current conversation and replay its whole history: unsubscribes
     * the previous current conversation, then subscribes with `since: 0`. Every stored event is
     * delivered to the handlers again, in order, then live events follow.
     */
    open(conversationId) {
      this._leaveCurrent(); // also when re-opening the current one: a clean replay from 0
      this._setCurrent(conversationId);
      return this.subscribe(conversationId, 0);
    }

    /** Subscribe to a conversation without making it current (e.g. a second chat on a page). */
    subscribe(conversationId, since) {
      const sub = this._subs.get(conversationId);
      const from = since !== undefined ? since : sub ? sub.lastSeq : 0;
      this._subs.set(conversationId, { lastSeq: from, gen: -1, resyncing: false });
      this._left.delete(conversationId);
      return this._subscribeFrame(conversationId);
    }

    /** Stop receiving a conversation's events. */
    unsubscribe(conversationId) {
      if (!this._subs.delete(conversationId)) return Promise.resolve(null);
      this._left.add(conversationId);
      // Handlers already running go on: their answer still resumes that conversation.
      for (const [id, c] of this._candidates) {
        if (c.conversationId === conversationId) this._candidates.delete(id);
      }
      if (this.state !== "open") return Promise.resolve(null);
      return this._request({ type: "unsubscribe", conversationId }).catch(() => null);
    }

    /**
     * Set (or clear, with null) the bearer token. Every socket opened from now on authenticates
     * with it first; an open socket authenticates right away. Resolves with the ack (`{user}`).
     */
    setToken(token) {
      this.token = token || null;
      const ws = this.socket;
      if (!this.token || !ws || this.state !== "open" || ws.readyState !== 1) {
        return Promise.resolve(null);
      }
      return this._authenticate(ws);
    }

    /** Forget the current conversation: the next sendMessage starts a new one. */
    newConversation() {
      this._leaveCurrent();
      this._setCurrent(null);
    }

    /** The last seq seen for a conversation (0 if none). */
    lastSeq(conversationId) {
      const sub = this._subs.get(conversationId || this.conversationId);
      return sub ? sub.lastSeq : 0;
    }

    /**
     * Run page code when an assistant asks the page to do something (Action in Page, and
     * `page` tools). `handler(params, interrupt, {conversationId, signal})` may return a value
     * or a Promise; the value is sent back with `resume(interrupt.id, undefined, value)`.
     * If it throws or rejects, nothing is sent and an "error" notification is emitted.
     * `signal` aborts when the interrupt gets answered some other way (e.g. a chat message).
     * Each interrupt is handled at most once per page, and never again after it was answered
     * (answered ids are kept in sessionStorage, so a reload does not repeat them either).
     */
    onPageAction(action, handler) {
      this._pageActions.set(action, handler);
      // An interrupt seen before the handler was registered can still be handled.
      for (const cid of this._subs.keys()) this._scheduleSettle(cid);
      return () => {
        if (this._pageActions.get(action) === handler) this._pageActions.delete(action);
      };
    }

    // ------------------------------------------------------------------ socket lifecycle

    _setState(state) {
      if (this.state === state) return;
      this.state = state;
      this._emit("connection", { state });
    }

    _open() {
      this._setState(this._gen === 0 ? "connecting" : "reconnecting");
      let ws;
      try {
        ws = new global.WebSocket(this.url);
      } catch (err) {
        this._emit("error", new ParleyError("connect_failed", String((err && err.message) || err)));
        this._scheduleReconnect();
        return;
      }
      this.socket = ws;
      ws.onopen = () => {
        if (ws !== this.socket) return;
        this._gen += 1;
        this._attempt = 0;
        // The auth frame goes first, before anything a "connection" handler may send.
        if (this.token) this._authenticate(ws).catch(() => {});
        this._setState("open");
        this._afterOpen();
      };
      ws.onmessage = (msg) => {
        if (ws !== this.socket) return;
        this._onFrame(msg.data);
      };
      ws.onerror = () => {
        /* a close event always follows; reconnecting happens there */
      };
      ws.onclose = () => {
        if (ws !== this.socket) return;
        this.socket = null;
        if (this._userClosed) {
          this._setState("closed");
          return;
        }
        // Any close we did not ask for — server restart, network, a test calling
        // socket.close() — reconnects.
        this._onDropped();
        this._scheduleReconnect();
      };
    }

    _scheduleReconnect() {
      if (this._userClosed) return;
      this._setState(this._gen === 0 && this._attempt === 0 ? "connecting" : "reconnecting");
      const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, this._attempt));
      const delay = Math.round(base / 2 + Math.random() * (base / 2)); // "equal jitter"
      this._attempt += 1;
      clearTimeout(this._timer);
      this._timer = setTimeout(() => {
        this._timer = null;
        if (!this._userClosed && !this.socket) this._open();
      }, delay);
    }

    _reconnectNow() {
      clearTimeout(this._timer);
      this._timer = null;
      if (!this._userClosed && !this.socket) this._open();
    }

    /**
     * Send `{"type":"auth","token"}` on `ws` now. The server answers with an ack (`{user}`) or an
     * `unauthorized` error, which is also emitted as an "error" notification. The pending entry
     * keeps a copy of the frame without the token, so no error or log ever shows it.
     */
    _authenticate(ws) {
      const id = randomId();
      const text = JSON.stringify({ type: "auth", id, token: this.token });
      return new Promise((resolve, reject) => {
        const entry = {
          frame: { type: "auth", id },
          resolve,
          reject: (err) => {
            this._emit("error", err);
            reject(err);
          },
          sentGen: this._gen,
        };
        this._pending.set(id, entry);
        try {
          ws.send(text);
        } catch (_) {
          /* the close handler drops the entry; the next socket authenticates again */
        }
      });
    }

    /**
     * The socket dropped: pending frames wait for the next socket, except unsubscribes and
     * auth (a new socket starts unauthenticated and sends its own auth frame first).
     */
    _onDropped() {
      for (const [id, entry] of this._pending) {
        if (entry.frame.type === "unsubscribe" || entry.frame.type === "auth") {
          this._pending.delete(id);
          entry.resolve(null); // a new socket starts with no subscriptions anyway
        } else {
          RESENT.add(entry.frame);
        }
      }
      for (const sub of this._subs.values()) sub.resyncing = false;
    }

    /** A socket opened: re-subscribe every conversation from its last seq, then re-send. */
    _afterOpen() {
      const pendingSubs = new Set();
      for (const entry of this._pending.values()) {
        if (entry.frame.type === "subscribe") pendingSubs.add(entry.frame.conversationId);
      }
      for (const cid of this._subs.keys()) {
        if (!pendingSubs.has(cid)) {
          this._subscribeFrame(cid).catch((err) => this._emit("error", err));
        }
      }
      // Pending frames (in the order they were made) go out with their original ids.
      for (const entry of this._pending.values()) this._write(entry);
    }

    // ------------------------------------------------------------------ frames out

    /** Send a frame that expects an ack/error; the promise settles on the answer. */
    _request(frame, build) {
      frame.id = randomId();
      return new Promise((resolve, reject) => {
        const entry = { frame, build, resolve, reject, sentGen: -1 };
        this._pending.set(frame.id, entry);
        this._write(entry);
      });
    }

    _write(entry) {
      const ws = this.socket;
      if (!ws || this.state !== "open" || ws.readyState !== 1) return; // sent after reconnect
      const frame = entry.build ? entry.build(entry.frame) : entry.frame;
      if (entry.sentGen === this._gen) return; // at most once per socket
      entry.sentGen = this._gen;
      if (frame.type === "subscribe") {
        const sub = this._subs.get(frame.conversationId);
        if (sub) sub.gen = this._gen;
      }
      try {
        ws.send(JSON.stringify(frame));
      } catch (_) {
        /* the close handler will re-send it */
      }
    }

    /** A subscribe frame whose `since` is taken at send time (so a re-send uses lastSeq). */
    _subscribeFrame(conversationId) {
      const build = (frame) => {
        const sub = this._subs.get(conversationId);
        frame.since = sub ? sub.lastSeq : 0;
        return frame;
      };
      const promise = this._request({ type: "subscribe", conversationId, since: 0 }, build);
      promise.catch(() => {}); // a subscribe nobody awaits must not raise "unhandled rejection"
      return promise;
    }

    _ensureSubscribed(conversationId) {
      if (!this._subs.has(conversationId)) this.subscribe(conversationId, 0).catch(() => {});
    }

    _leaveCurrent() {
      const prev = this.conversationId;
      if (prev) this.unsubscribe(prev);
    }

    _setCurrent(conversationId) {
      if (this.conversationId === conversationId) return;
      this.conversationId = conversationId;
      this._emit("conversation", { conversationId });
    }

    /**
     * After a send's ack: the server subscribed this socket to a new conversation. If the ack
     * answers a frame re-sent after a reconnect, the socket that was auto-subscribed is gone,
     * so subscribe explicitly from the last seq seen.
     */
    _adoptSubscription(conversationId, frame) {
      const resent = RESENT.has(frame);
      let sub = this._subs.get(conversationId);
      if (!sub) {
        sub = { lastSeq: 0, gen: resent ? -1 : this._gen, resyncing: false };
        this._subs.set(conversationId, sub);
        this._left.delete(conversationId);
      }
      if (resent && sub.gen !== this._gen) {
        this._subscribeFrame(conversationId).catch((err) => this._emit("error", err));
      }
    }

    // ------------------------------------------------------------------ frames in

    _onFrame(data) {
      let frame;
      try {
        frame = JSON.parse(data);
      } catch (_) {
        this._emit("error", new ParleyError("bad_frame", "The server sent a frame that is not JSON"));
        return;
      }
      if (!frame || typeof frame !== "object") return;
      switch (frame.type) {
        case "event":
          this._onEvent(frame);
          break;
        case "ack":
          this._settle(frame, null);
          this._emit("ack", frame);
          break;
        case "error":
          this._settle(frame, new ParleyError(frame.code, frame.message, frame.details));
          break;
        default:
          break; // unknown frame types are ignored (forward compatible)
      }
    }

    _settle(frame, error) {
      const entry = frame.id != null ? this._pending.get(frame.id) : undefined;
      if (!entry) {
        // An error without an id (or for a frame nobody waits for) is still worth showing.
        if (error) this._emit("error", error);
        return;
      }
      this._pending.delete(frame.id);
      if (error) {
        error.frame = entry.frame;
        entry.reject(error);
      } else {
        entry.resolve(frame);
      }
    }

    _onEvent(frame) {
      const cid = frame.conversationId;
      const seq = Number(frame.seq);
      const event = frame.event || {};
      let sub = this._subs.get(cid);
      if (!sub) {
        // Events of a conversation we never asked for: a conversation just created by a send
        // whose ack is still on its way. Adopt it if such a send is pending, else ignore.
        if (this._left.has(cid) || !this._hasPendingCreate()) return;
        sub = { lastSeq: 0, gen: this._gen, resyncing: false };
        this._subs.set(cid, sub);
        if (!this.conversationId) this._setCurrent(cid);
      }
      if (!(seq > sub.lastSeq)) return; // already seen: replay overlap or duplicate
      if (seq !== sub.lastSeq + 1) {
        // While a subscribe is on its way, events of the previous subscription may still
        // arrive: its replay brings everything in order. Otherwise a gap should never happen;
        // re-subscribe from the last seq instead of skipping the missing events.
        if (!sub.resyncing && !this._subscribing(cid)) this._resync(cid, sub);
        return;
      }
      sub.lastSeq = seq;
      const meta = { conversationId: cid, seq };
      this._trackInterrupts(event, meta);
      this._emit(event.type, event, meta);
      this._emit("*", event, meta);
    }

    _subscribing(conversationId) {
      for (const entry of this._pending.values()) {
        const f = entry.frame;
        if (f.type === "subscribe" && f.conversationId === conversationId) return true;
      }
      return false;
    }

    _resync(conversationId, sub) {
      sub.resyncing = true;
      const done = () => {
        sub.resyncing = false;
      };
      this._request({ type: "unsubscribe", conversationId }).catch(() => null);
      this._subscribeFrame(conversationId).then(done, (err) => {
        done();
        this._emit("error", err);
      });
    }

    _hasPendingCreate() {
      for (const entry of this._pending.values()) {
        if (entry.frame.type === "send" && !entry.frame.conversationId) return true;
      }
      return false;
    }

    // ------------------------------------------------------------------ page actions

    /**
     * Keep track of which page-action interrupts are still pending. An interrupt becomes a
     * candidate when a RUN_FINISHED announces it; it stops being one as soon as anything shows it
     * was answered: a later RUN_STARTED / RUN_FINISHED / RUN_ERROR, or the end of its node.
     * Candidates are run only once the conversation has been quiet for SETTLE_MS, so a replay
     * of old history (which arrives in one burst) never runs an interrupt that the same replay
     * later shows as answered.
     */
    _trackInterrupts(event, meta) {
      const type = event.type;
      const cid = meta.conversationId;
      if (type === "RUN_STARTED" || type === "RUN_FINISHED" || type === "RUN_ERROR") {
        this._answered(cid, meta.seq, () => true);
      } else if (type === "STEP_FINISHED") {
        this._answered(cid, meta.seq, (nodeId) => nodeId === event.stepName);
      }
      if (type === "RUN_FINISHED" && event.outcome && event.outcome.type === "interrupt") {
        for (const interrupt of event.outcome.interrupts || []) {
          if (!interrupt || interrupt.reason !== "page_action" || !interrupt.id) continue;
          if (this._handled.has(interrupt.id)) continue;
          this._candidates.set(interrupt.id, { interrupt, conversationId: cid, seq: meta.seq });
        }
      }
      this._scheduleSettle(meta.conversationId);
    }

    /**
     * The conversation moved on, at `seq`, past its earlier interrupts (those of nodes that
     * `matches`): forget those candidates and abort their running handlers. (A replay of old
     * history has smaller seqs than a running handler's interrupt and so never aborts it.)
     */
    _answered(conversationId, seq, matches) {
      for (const [id, c] of this._candidates) {
        if (c.conversationId === conversationId && c.seq < seq && matches(c.interrupt.nodeId)) {
          this._candidates.delete(id);
        }
      }
      for (const run of this._inFlight.values()) {
        const hit = run.conversationId === conversationId && run.seq < seq;
        if (hit && !run.done && matches(run.nodeId)) {
          run.done = true;
          run.ctrl.abort();
        }
      }
    }

    _scheduleSettle(conversationId) {
      clearTimeout(this._settleTimers.get(conversationId));
      this._settleTimers.set(
        conversationId,
        setTimeout(() => {
          this._settleTimers.delete(conversationId);
          this._runPageActions(conversationId);
        }, SETTLE_MS)
      );
    }

    _runPageActions(conversationId) {
      for (const [id, c] of this._candidates) {
        if (c.conversationId !== conversationId) continue;
        if (this._inFlight.has(id) || this._handled.has(id)) continue;
        const handler = this._pageActions.get(c.interrupt.action);
        if (!handler) continue; // nobody on this page can do it; the user may answer in chat
        this._candidates.delete(id);
        this._invokePageAction(handler, c, conversationId);
      }
    }

    _invokePageAction(handler, candidate, conversationId) {
      const interrupt = candidate.interrupt;
      const ctrl = new AbortController();
      const signal = ctrl.signal;
      const run = { ctrl, conversationId, nodeId: interrupt.nodeId, seq: candidate.seq, done: false };
      this._inFlight.set(interrupt.id, run); // kept: never called twice on this page
      const fail = (err) => {
        const e = new ParleyError(
          "page_action_failed",
          "Page action '" + interrupt.action + "' failed: " + ((err && err.message) || err)
        );
        e.interrupt = interrupt;
        e.cause = err;
        this._emit("error", e);
      };
      let result;
      try {
        result = handler(interrupt.params || {}, interrupt, { conversationId, signal });
      } catch (err) {
        run.done = true;
        fail(err);
        return;
      }
      Promise.resolve(result).then(
        (value) => {
          if (signal.aborted) return; // answered some other way meanwhile
          run.done = true;
          this._markHandled(interrupt.id);
          this.resume(interrupt.id, undefined, value === undefined ? null : value, conversationId).catch(
            (err) => {
              if (err && err.code === "interrupt_not_pending") return; // answered elsewhere
              this._emit("error", err);
            }
          );
        },
        (err) => {
          if (signal.aborted) return;
          run.done = true;
          fail(err);
        }
      );
    }

    _markHandled(interruptId) {
      if (this._handled.has(interruptId)) return;
      this._handled.add(interruptId);
      saveHandled(Array.from(this._handled));
    }

    // ------------------------------------------------------------------ notifications

    _emit(type, payload, meta) {
      const set = this._handlers.get(type);
      if (!set) return;
      for (const handler of Array.from(set)) {
        try {
          handler(payload, meta);
        } catch (err) {
          if (type !== "error") this._emit("error", err);
          else if (global.console) global.console.error(err);
        }
      }
    }
  }

  ParleyClient.ParleyError = ParleyError;
  ParleyClient.resolveWsUrl = resolveWsUrl;
  global.ParleyClient = ParleyClient;
  global.Parley = { ParleyClient, ParleyError };
})(typeof window !== "undefined" ? window : globalThis);
