#!/usr/bin/env bash
# Start or stop a throw-away PostgreSQL server on loopback for the store tests.
#   scripts/postgres.sh start DIR PORT   -> prints the database URL
#   scripts/postgres.sh stop DIR
# PostgreSQL refuses to run as root, so as root the server runs as the 'postgres' user.
set -euo pipefail
cmd=$1 dir=$2 port=${3:-55432}
# Debian keeps the server binaries off PATH.
for bin in /usr/lib/postgresql/*/bin; do [ -d "$bin" ] && PATH="$PATH:$bin"; done
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$cmd" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg initdb -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1
    as_pg pg_ctl -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null
    as_pg createdb -h 127.0.0.1 -p "$port" -U postgres corll_test
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/corll_test"
    ;;
  stop)
    as_pg pg_ctl -D "$dir/data" -m fast stop >/dev/null
    ;;
  *) echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
