"""Parley's OpenAI-compatible front (/v1) driven by the official `openai` package.

Starts the real server binary (target/debug/parley, or $PARLEY_BIN) on an ephemeral port with
token auth and the test fixtures (tests/fixtures/assistants), then calls it as an OpenAI
client would. Exits non-zero if any check fails. Run by scripts/test.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import openai

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKEN = "pk_openai_test_token"
CONV = "x-parley-conversation-id"


class Server:
    """The real parley binary on port 0; the address is read from its log."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        cfg = os.path.join(self.dir.name, "config.toml")
        sha = hashlib.sha256(TOKEN.encode()).hexdigest()
        with open(cfg, "w") as f:
            f.write(
                f"""[server]
listen = "127.0.0.1:0"

[storage]
data_dir = {json.dumps(os.path.join(self.dir.name, "db"))}

[assistants]
dir = {json.dumps(os.path.join(ROOT, "tests", "fixtures", "assistants"))}

[llm.default]
provider = "builtin"
pace_ms = 0

[llm.slow]
provider = "builtin"
pace_ms = 60

[llm.broken]
provider = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "none"
max_retries = 0
timeout_seconds = 2

[auth]
mode = "token"
[[auth.tokens]]
user = "alice"
sha256 = "{sha}"
"""
            )
        binary = os.environ.get("PARLEY_BIN", os.path.join(ROOT, "target", "debug", "parley"))
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", cfg],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = []
        found = threading.Event()
        self.addr = None

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on http://(\S+)", line)
                if m and not found.is_set():
                    self.addr = m.group(1)
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(30):
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.log))
        self.base_url = f"http://{self.addr}/v1"

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.dir.cleanup()


class Counter:
    """Counts the requests the client sends (an httpx event hook), to see retries."""

    def __init__(self):
        self.n = 0

    def __call__(self, request):
        self.n += 1


def client(server, key=TOKEN, counter=None, **kw):
    http = None
    if counter is not None:
        http = openai.DefaultHttpxClient(event_hooks={"request": [counter]})
    return openai.OpenAI(base_url=server.base_url, api_key=key, http_client=http, **kw)


def user(text):
    return {"role": "user", "content": text}


# ---- the checks ---------------------------------------------------------------------------


def models_list(s):
    models = client(s).models.list()
    ids = [m.id for m in models.data]
    assert "chat" in ids and "expense_demo" in ids, ids
    assert all(m.object == "model" and m.owned_by == "parley" for m in models.data)


def non_streamed_completion(s):
    raw = client(s).chat.completions.with_raw_response.create(
        model="chat", messages=[user("Tell me about the weather in Lisbon")]
    )
    assert raw.headers.get(CONV), raw.headers
    c = raw.parse()
    assert c.object == "chat.completion"
    assert c.model == "chat"
    ch = c.choices[0]
    assert ch.finish_reason == "stop", ch
    assert ch.message.role == "assistant"
    assert ch.message.content and "Lisbon" in ch.message.content, ch.message.content
    assert c.usage.total_tokens > 0, c.usage
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens


def streamed_completion(s):
    raw = client(s).chat.completions.with_raw_response.create(
        model="chat",
        messages=[user("Tell me about the bridges of Porto")],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers.get(CONV), raw.headers
    chunks = list(raw.parse())  # the client stops at data: [DONE]
    ids = {c.id for c in chunks}
    assert len(ids) == 1, ids
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Porto" in text, text
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 1, "the text is streamed in pieces"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage and last.usage.total_tokens > 0, last
    # [DONE] ends the stream: check it on the wire too.
    import httpx2

    with httpx2.stream(
        "POST",
        s.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"model": "chat", "messages": [user("hi")], "stream": True},
        timeout=30,
    ) as r:
        lines = [l for l in r.iter_lines() if l.startswith("data: ")]
    assert lines[-1] == "data: [DONE]", lines[-3:]


def second_turn_remembers(s):
    c = client(s)
    raw = c.chat.completions.with_raw_response.create(
        model="chat", messages=[user("My favourite city is Trondheim")]
    )
    cid = raw.headers[CONV]
    first = raw.parse().choices[0].message.content
    second = c.chat.completions.create(
        model="chat",
        messages=[
            user("My favourite city is Trondheim"),
            {"role": "assistant", "content": first},
            user("Which city did I name?"),
        ],
        extra_headers={"X-Parley-Conversation-Id": cid},
    )
    text = second.choices[0].message.content
    # The built-in model mentions the previous user turn: only the conversation's memory has it.
    assert "Trondheim" in text, text
    # The same through the body field, in a fresh conversation it must NOT remember.
    other = c.chat.completions.create(model="chat", messages=[user("Which city did I name?")])
    assert "Trondheim" not in other.choices[0].message.content


def interactive_through_tool_calls(s):
    c = client(s)
    messages = [user("I took a taxi to the airport for 42.50 EUR")]
    raw = c.chat.completions.with_raw_response.create(
        model="expense_demo", messages=messages, extra_body={"parley": {"args": {"department": "sales"}}}
    )
    cid = raw.headers[CONV]
    r = raw.parse()
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls", ch
    (card,) = ch.message.tool_calls
    assert card.function.name == "parley_confirmation", card
    interrupt = json.loads(card.function.arguments)
    assert interrupt["id"] == card.id and interrupt["reason"] == "conversation_action"
    assert "approve" in interrupt["buttons"]
    messages.append(ch.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": card.id, "content": json.dumps({"action": "approve"})})
    # The page action: streamed this time, with the conversation in the body.
    chunks = list(
        c.chat.completions.create(
            model="expense_demo",
            messages=messages,
            stream=True,
            extra_body={"parley": {"conversationId": cid}},
        )
    )
    calls = [tc for k in chunks if k.choices for tc in (k.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["fill_claim_form"], calls
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    page = calls[0]
    params = json.loads(page.function.arguments)["params"]
    assert params["department"] == "sales", params
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": page.id, "type": "function", "function": {"name": page.function.name, "arguments": page.function.arguments}}]})
    messages.append({"role": "tool", "tool_call_id": page.id, "content": json.dumps(
        {"value": {"amount": 42.5, "currency": "EUR", "purpose": "taxi", "department": "sales"}})})
    end = c.chat.completions.create(
        model="expense_demo", messages=messages, extra_headers={"X-Parley-Conversation-Id": cid}
    )
    ch = end.choices[0]
    assert ch.finish_reason == "stop", ch
    assert "Claim filed: 42.5 EUR for taxi (sales)" in ch.message.content, ch.message.content
    # Answering the same interrupt again: 409 interrupt_not_pending, not retried.
    n = Counter()
    try:
        client(s, counter=n).chat.completions.create(
            model="expense_demo", messages=messages, extra_headers={"X-Parley-Conversation-Id": cid}
        )
        raise AssertionError("a second answer to the same interrupt was accepted")
    except openai.ConflictError as e:
        assert e.body["code"] == "interrupt_not_pending", e.body
    assert n.n == 1, n.n


def unknown_model(s):
    try:
        client(s).chat.completions.create(model="no_such_assistant", messages=[user("hi")])
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404
        assert e.body["code"] == "unknown_assistant" and e.body["param"] == "model", e.body
        assert e.body["type"] == "invalid_request_error"


def bad_args(s):
    for extra in [{}, {"parley": {"args": {"department": "marketing"}}}]:
        try:
            client(s).chat.completions.create(
                model="expense_demo", messages=[user("taxi 10 EUR")], extra_body=extra
            )
            raise AssertionError(f"bad args {extra} were accepted")
        except openai.UnprocessableEntityError as e:
            assert e.status_code == 422
            assert e.body["code"] == "invalid_args" and "department" in e.body["message"], e.body


def busy_conversation(s):
    c = client(s)
    raw = c.chat.completions.with_raw_response.create(
        model="slow", messages=[user("the history of lighthouses")], stream=True
    )
    cid = raw.headers[CONV]
    stream = raw.parse()
    it = iter(stream)
    first = next(it)
    assert first.choices[0].delta.role == "assistant"
    n = Counter()
    t0 = time.monotonic()
    try:
        client(s, counter=n).chat.completions.create(
            model="slow", messages=[user("and again")], extra_headers={"X-Parley-Conversation-Id": cid}
        )
        raise AssertionError("a send into a busy conversation was accepted")
    except openai.ConflictError as e:
        assert e.status_code == 409
        assert e.body["code"] == "conversation_busy", e.body
        assert e.response.headers.get("x-should-retry") == "false"
        assert e.response.headers.get(CONV) == cid
    assert n.n == 1, f"the 409 was retried: {n.n} requests"
    assert time.monotonic() - t0 < 5, "no retry back-off happened"
    rest = list(it)
    assert rest and rest[-1].choices[0].finish_reason == "stop"


def bad_token(s):
    for key in ["pk_wrong", ""]:
        try:
            client(s, key=key or "x").models.list()
            raise AssertionError("a bad token was accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401 and e.body["code"] == "unauthorized", e.body
    try:
        client(s, key="pk_wrong").chat.completions.create(model="chat", messages=[user("hi")])
        raise AssertionError("a bad token was accepted")
    except openai.AuthenticationError:
        pass


CHECKS = [
    models_list,
    non_streamed_completion,
    streamed_completion,
    second_turn_remembers,
    interactive_through_tool_calls,
    unknown_model,
    bad_args,
    busy_conversation,
    bad_token,
]


def main():
    s = Server()
    failed = 0
    try:
        for check in CHECKS:
            try:
                check(s)
                print(f"openai client: {check.__name__} ... ok")
            except Exception:
                failed += 1
                print(f"openai client: {check.__name__} ... FAILED")
                traceback.print_exc()
    finally:
        if failed:
            print("---- server log ----\n" + "".join(s.log[-60:]))
        s.stop()
    print(f"openai client: {len(CHECKS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
