# shellcheck shell=bash
# A throwaway PostgreSQL cluster for tests and local clusters: sourced by scripts/test and
# scripts/cluster. `pg_start DIR` installs Debian's postgresql when it is missing, runs initdb
# into DIR on a free loopback port as a non-root user (initdb refuses root; CI runs as root),
# starts the server and sets PARLEY_TEST_POSTGRES_URL. `pg_stop DIR` stops it; the caller
# removes DIR.

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

pg_install() {
  pg_bin >/dev/null && return 0
  echo "==> installing postgresql (Debian package)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
}

# The user the server runs as: ourselves, or (as root) a system user made for it.
pg_user() {
  if [ "$(id -u)" != 0 ]; then id -un; return; fi
  id -u parley-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin parley-pg
  echo parley-pg
}

pg_as() {
  local user=$1; shift
  if [ "$user" = "$(id -un)" ]; then "$@"; else runuser -u "$user" -- "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

pg_start() {
  local dir=$1 bin user port
  pg_install
  bin=$(pg_bin)
  user=$(pg_user)
  port=$(free_port)
  mkdir -p "$dir"
  # The server's user must reach DIR through its parent (a mktemp -d folder is 0700).
  chmod a+x "$(dirname "$dir")"
  chown "$user" "$dir"
  chmod 700 "$dir"
  pg_as "$user" "$bin/initdb" -D "$dir/data" -U parley --auth=trust -E UTF8 --no-locale >/dev/null
  pg_as "$user" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200" start >/dev/null
  pg_as "$user" "$bin/createdb" -h 127.0.0.1 -p "$port" -U parley parley
  export PARLEY_TEST_POSTGRES_URL="postgres://parley@127.0.0.1:$port/parley"
  export PARLEY_TEST_PG_BIN="$bin" PARLEY_TEST_PG_DIR="$dir" PARLEY_TEST_PG_USER="$user" PARLEY_TEST_PG_PORT="$port"
}

pg_stop() {
  local dir=$1 bin user
  [ -d "$dir/data" ] || return 0
  bin=$(pg_bin) || return 0
  user=$(stat -c %U "$dir")
  pg_as "$user" "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
}
