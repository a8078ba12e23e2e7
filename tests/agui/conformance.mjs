// AG-UI conformance: the real @ag-ui/client HttpAgent (its verifier and @ag-ui/core's zod
// schemas) against the real Parley server (the debug binary, started here on port 0 with the
// test fixtures). Run by scripts/test; alone: `node tests/agui/conformance.mjs` after
// `cargo build` (PARLEY_BIN overrides the binary).
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";
import assert from "node:assert/strict";
import { HttpAgent } from "@ag-ui/client";
import { EventSchemas } from "@ag-ui/core/schemas";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.PARLEY_BIN ?? join(root, "target", "debug", "parley");

async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), "parley-agui-"));
  const config = join(dir, "config.toml");
  writeFileSync(
    config,
    `[server]\nlisten = "127.0.0.1:0"\n\n[storage]\ndata_dir = ${JSON.stringify(join(dir, "db"))}\n\n` +
      `[assistants]\ndir = ${JSON.stringify(join(root, "tests", "fixtures", "assistants"))}\n\n` +
      `[llm.default]\nprovider = "builtin"\npace_ms = 0\n\n[llm.slow]\nprovider = "builtin"\npace_ms = 30\n\n` +
      `[llm.broken]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "none"\nmax_retries = 0\ntimeout_seconds = 2\n`,
  );
  const child = spawn(bin, ["serve", "--config", config], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, RUST_LOG: "info" },
  });
  const base = await new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => reject(new Error(`no 'listening on' from ${bin}:\n${buf}`)), 60000);
    child.stderr.on("data", (d) => {
      buf += d.toString();
      const m = buf.match(/listening on (http:\/\/[^\s]+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1].replace(/\/$/, ""));
      }
    });
    child.on("exit", (code) => reject(new Error(`parley exited (${code}):\n${buf}`)));
  });
  child.stderr.resume();
  return {
    base,
    stop() {
      child.kill("SIGTERM");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function agent(base, assistant, threadId = randomUUID()) {
  return new HttpAgent({ url: `${base}/agui/${assistant}`, threadId });
}

function say(a, content) {
  a.addMessage({ id: randomUUID(), role: "user", content });
}

/** runAgent, also collecting every event the client accepted. */
async function run(a, params = {}) {
  const events = [];
  const result = await a.runAgent(params, {
    onEvent: ({ event }) => {
      events.push(event);
    },
  });
  return { result, events };
}

function lastAssistantText(a) {
  const m = [...a.messages].reverse().find((m) => m.role === "assistant" && m.content);
  return m?.content ?? "";
}

/** Read an SSE body into `{id, data}` messages (`until(msg)` stops early and aborts). */
async function readSse(res, until) {
  const out = [];
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let id = null;
      let data = null;
      for (const line of block.split("\n")) {
        if (line.startsWith("id: ")) id = Number(line.slice(4));
        if (line.startsWith("data: ")) data = JSON.parse(line.slice(6));
      }
      if (data) {
        out.push({ id, data });
        if (until && until(out)) {
          await reader.cancel();
          return out;
        }
      }
    }
  }
  return out;
}

/** The checks a client applies, over raw events: schemas, one run at a time, steps unique. */
function checkRuns(events) {
  let open = false;
  const steps = new Set();
  for (const e of events) {
    EventSchemas.parse(e);
    assert.ok(!e.type.startsWith("THINKING"), e.type);
    if (e.type === "RUN_STARTED") {
      assert.ok(!open, "RUN_STARTED while a run is open");
      open = true;
      steps.clear();
      continue;
    }
    assert.ok(open, `${e.type} outside a run`);
    if (e.type === "STEP_STARTED") {
      assert.ok(!steps.has(e.stepName), `step ${e.stepName} reused while open`);
      steps.add(e.stepName);
    }
    if (e.type === "STEP_FINISHED") steps.delete(e.stepName);
    if (e.type === "RUN_FINISHED") {
      assert.equal(steps.size, 0, "RUN_FINISHED with open steps");
      open = false;
    }
    if (e.type === "RUN_ERROR") open = false;
  }
}

const cases = [];
const test = (name, fn) => cases.push({ name, fn });

test("plain streamed chat", async ({ base }) => {
  const a = agent(base, "chat");
  say(a, "Hello there");
  const { events, result } = await run(a);
  assert.equal(events[0].type, "RUN_STARTED");
  assert.equal(events.at(-1).type, "RUN_FINISHED");
  assert.ok(events.some((e) => e.type === "TEXT_MESSAGE_CONTENT"));
  assert.ok(lastAssistantText(a).length > 0, "an assistant message");
  assert.ok(result.result && typeof result.result.text === "string", JSON.stringify(result.result));
  // The client re-sends its whole history: a second turn stores one new message only.
  say(a, "And another thing");
  await run(a);
  const users = a.messages.filter((m) => m.role === "user").length;
  assert.equal(users, 2);
  const res = await fetch(`${base}/api/conversations/${a.threadId}/messages?limit=100`);
  const page = await res.json();
  const stored = page.items.filter((m) => m.role === "user").length;
  assert.equal(stored, 2, JSON.stringify(page.items));
});

for (const [action, reply] of [
  ["approve", "Approved: new laptop (42)"],
  ["reject", "Rejected."],
]) {
  test(`approval card resumed with resume[] (${action})`, async ({ base }) => {
    const a = agent(base, "approval");
    say(a, "new laptop");
    const first = await run(a);
    const fin = first.events.at(-1);
    assert.equal(fin.type, "RUN_FINISHED");
    assert.equal(fin.outcome.type, "interrupt");
    assert.equal(a.pendingInterrupts.length, 1);
    const i = a.pendingInterrupts[0];
    assert.equal(i.reason, "confirmation");
    assert.equal(i.message, "Approve 'new laptop'?");
    assert.deepEqual(i.metadata.buttons, ["approve", "reject"]);
    assert.equal(i.metadata.nodeId, "confirm");
    assert.deepEqual(i.metadata.display, { request: "new laptop", amount: 42 });
    assert.ok(i.responseSchema, "a responseSchema");
    const second = await run(a, {
      resume: [{ interruptId: i.id, status: "resolved", payload: { action } }],
    });
    assert.equal(second.events.at(-1).outcome?.type ?? "success", "success");
    assert.equal(a.pendingInterrupts.length, 0);
    assert.equal(lastAssistantText(a), reply);
    assert.equal(second.result.result.action, action);
  });
}

test("page action as a frontend tool round trip", async ({ base }) => {
  const a = agent(base, "page");
  say(a, "hello form");
  const tools = [
    {
      name: "fill_form",
      description: "Fills the form on the page",
      parameters: { type: "object", properties: { text: { type: "string" } } },
    },
  ];
  const first = await run(a, { tools });
  const fin = first.events.at(-1);
  assert.equal(fin.outcome.type, "success");
  assert.equal(fin.outcome.pendingToolCallIds.length, 1);
  const callId = fin.outcome.pendingToolCallIds[0];
  const call = a.messages.flatMap((m) => m.toolCalls ?? []).find((c) => c.id === callId);
  assert.ok(call, "the tool call is in the client's messages");
  assert.equal(call.function.name, "fill_form");
  assert.deepEqual(JSON.parse(call.function.arguments), { text: "hello form" });
  a.addMessage({ id: randomUUID(), role: "tool", toolCallId: callId, content: '{"submitted":true}' });
  const second = await run(a, { tools });
  assert.equal(second.events.at(-1).type, "RUN_FINISHED");
  assert.match(lastAssistantText(a), /The page sent: /);
  assert.deepEqual(second.result.result.value, { submitted: true });
});

test("tool confirmation", async ({ base }) => {
  const a = agent(base, "tool_confirm");
  say(a, "refund please");
  await run(a);
  assert.equal(a.pendingInterrupts.length, 1);
  const i = a.pendingInterrupts[0];
  assert.equal(i.reason, "confirmation");
  assert.ok(i.toolCallId, "a tool confirmation names its tool call");
  assert.equal(i.metadata.parleyReason, "tool_confirmation");
  await run(a, { resume: [{ interruptId: i.id, status: "resolved", payload: { action: "approve" } }] });
  assert.equal(a.pendingInterrupts.length, 0);
  assert.equal(lastAssistantText(a), "Refund made.");
});

test("a loop with a card per item", async ({ base }) => {
  const a = agent(base, "card_loop");
  say(a, "apples\npears\nplums");
  let r = await run(a);
  const seen = [];
  while (a.pendingInterrupts.length > 0) {
    const i = a.pendingInterrupts[0];
    seen.push(i.message);
    r = await run(a, { resume: [{ interruptId: i.id, status: "resolved", payload: { action: "approve" } }] });
    checkRuns(r.events);
  }
  assert.deepEqual(seen, ["Approve item 1: apples?", "Approve item 2: pears?", "Approve item 3: plums?"]);
  assert.equal(r.result.result.count, 3);
});

test("unknown assistant: the HTTP error surfaces", async ({ base }) => {
  const a = agent(base, "no_such_assistant");
  say(a, "hi");
  await assert.rejects(a.runAgent(), (e) => {
    assert.match(String(e.message ?? e), /404|unknown_assistant/);
    return true;
  });
});

test("stale interrupt id: RUN_ERROR", async ({ base }) => {
  const a = agent(base, "approval");
  say(a, "a chair");
  await run(a);
  const i = a.pendingInterrupts[0];
  await run(a, { resume: [{ interruptId: i.id, status: "resolved", payload: { action: "approve" } }] });
  const errors = [];
  await a
    .runAgent(
      { resume: [{ interruptId: i.id, status: "resolved", payload: { action: "approve" } }] },
      { onRunErrorEvent: ({ event }) => errors.push(event) },
    )
    .catch(() => {});
  assert.equal(errors.length, 1, "one RUN_ERROR");
  assert.equal(errors[0].code, "interrupt_not_pending");
});

test("dropped stream rejoined through the events route, nothing lost", async ({ base }) => {
  const threadId = randomUUID();
  const body = {
    threadId,
    runId: randomUUID(),
    state: {},
    messages: [{ id: randomUUID(), role: "user", content: "rivers and mountains" }],
    tools: [],
    context: [],
    forwardedProps: {},
  };
  const res = await fetch(`${base}/agui/slow`, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "text/event-stream" },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200);
  // Drop the stream after a few text deltas.
  const before = await readSse(res, (o) => o.filter((m) => m.data.type === "TEXT_MESSAGE_CONTENT").length >= 3);
  const lastId = before.filter((m) => m.id !== null).at(-1).id;
  const url = `${base}/agui/slow/threads/${threadId}/events?until=idle`;
  const rejoin = await readSse(await fetch(url, { headers: { "Last-Event-ID": String(lastId) } }));
  assert.equal(rejoin[0].data.type, "RUN_STARTED", "a rejoin mid-run opens the run again");
  checkRuns(rejoin.map((m) => m.data));
  assert.equal(rejoin.at(-1).data.type, "RUN_FINISHED");
  const full = await readSse(await fetch(url));
  checkRuns(full.map((m) => m.data));
  const strip = (ms) => ms.filter((m) => !m.data.metadata?.rejoined).map((m) => JSON.stringify(m.data));
  const joined = [...before.filter((m) => m.id !== null && m.id <= lastId), ...rejoin.filter((m) => m.id > lastId)];
  assert.deepEqual(strip(joined), strip(full), "the dropped and the rejoined stream together are the whole run");
  const text = (ms) => ms.filter((m) => m.data.type === "TEXT_MESSAGE_CONTENT").map((m) => m.data.delta).join("");
  assert.ok(text(full).length > 0);
  assert.equal(text(joined), text(full));
});

const server = await startServer();
let failed = 0;
for (const c of cases) {
  try {
    await c.fn(server);
    console.log(`ok   ${c.name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${c.name}\n${e?.stack ?? e}`);
  }
}
server.stop();
console.log(`agui conformance: ${cases.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
