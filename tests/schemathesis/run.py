"""Schemathesis against the real server: every operation of GET /openapi.json, every check.

Starts target/debug/parley (or $PARLEY_BIN) on an ephemeral port with the test fixtures
(tests/fixtures/assistants), once per auth mode (`none`, and `token` with the token sent on
every request), and runs `st run --checks all` with a bounded number of examples per operation
(`$SCHEMATHESIS_MAX_EXAMPLES`, default 20) and a fixed seed, so a run is reproducible and takes
about a minute per mode on two cores. Any server error or any disagreement between the spec and
the server fails the run. Prints `schemathesis: N passed, N failed` (one test per mode) and exits
non-zero on a failure. Run by scripts/test, in the venv it makes from requirements.txt.
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

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKEN = "pk_schemathesis_token"
ST = os.path.join(os.path.dirname(sys.executable), "st")


class Server:
    """The real parley binary on port 0; the address is read from its log."""

    def __init__(self, mode):
        self.dir = tempfile.TemporaryDirectory()
        cfg = os.path.join(self.dir.name, "config.toml")
        auth = 'mode = "none"'
        if mode == "token":
            sha = hashlib.sha256(TOKEN.encode()).hexdigest()
            auth = f'mode = "token"\n[[auth.tokens]]\nuser = "alice"\nsha256 = "{sha}"'
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
pace_ms = 0

# The fixtures' unreachable provider would answer `502 llm_error` by design: not what this
# run is about.
[llm.broken]
provider = "builtin"
pace_ms = 0

[auth]
{auth}
"""
            )
        binary = os.environ.get("PARLEY_BIN", os.path.join(ROOT, "target", "debug", "parley"))
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", cfg],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "warn,parley=info"},
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

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.dir.cleanup()


def run(mode):
    server = Server(mode)
    try:
        url = f"http://{server.addr}"
        cmd = [
            ST,
            "--config-file",
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemathesis.toml"),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "20"),
            "--seed",
            os.environ.get("SCHEMATHESIS_SEED", "18"),
            # One worker: the Python 3.11 parser is not safe for schemathesis's threads.
            "--workers",
            "1",
            "--request-timeout",
            "20",
            "--suppress-health-check",
            "all",
        ]
        if mode == "token":
            cmd += ["--header", f"Authorization: Bearer {TOKEN}"]
        started = time.monotonic()
        print(f"==> schemathesis, auth mode {mode}", flush=True)
        # In the server's temp dir, so schemathesis's cache stays out of the repository.
        status = subprocess.call(cmd, cwd=server.dir.name, env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        print(f"schemathesis ({mode}): exit {status} in {time.monotonic() - started:.0f} s", flush=True)
        if server.proc.poll() is not None:
            print("the server died:\n" + "".join(server.log[-50:]), flush=True)
            return False
        panics = [l for l in server.log if "panicked" in l]
        if panics:
            print("the server panicked:\n" + "".join(panics), flush=True)
            return False
        return status == 0
    finally:
        server.stop()


def main():
    modes = sys.argv[1:] or ["none", "token"]
    results = [run(m) for m in modes]
    passed = sum(results)
    failed = len(results) - passed
    print(f"schemathesis: {passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
