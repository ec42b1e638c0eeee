#!/usr/bin/env bash
# The reference setup of README "Several instances", on one machine: PostgreSQL and Redis
# (started if they are down), migrations, INSTANCES instances of `chat-backend serve`, and
# nginx in front of them. Ctrl-C (or SIGTERM) stops them all.
#
#   scripts/run-cluster.sh                 # http://127.0.0.1:8080/graphql, instances on 8001, 8002
#   PORT=9000 INSTANCE_PORTS=9001,9002,9003 scripts/run-cluster.sh
#
# Settings come from the environment like everywhere else (SECRET_KEY, DATABASE_URL,
# BROADCAST_URL, LOG_FORMAT ...); the defaults here are for a local run. Each instance logs to
# RUN_DIR/instance-N.log; nginx's config and logs are in RUN_DIR too (a new temporary folder
# unless RUN_DIR is set).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-8080}"
INSTANCE_PORTS="${INSTANCE_PORTS:-8001,8002}"
export DATABASE_URL="${DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/chat_cluster}"
export BROADCAST_URL="${BROADCAST_URL:-redis://127.0.0.1:6379/0}"
# Only nginx, on this machine, may set the client address (X-Forwarded-For).
export FORWARDED_ALLOW_IPS="${FORWARDED_ALLOW_IPS:-127.0.0.1}"
RUN_DIR="${RUN_DIR:-$(mktemp -d -t chat-cluster.XXXXXX)}"
mkdir -p "$RUN_DIR/nginx-tmp"
if [ -z "${SECRET_KEY:-}" ]; then
  # Every instance must share one: a cookie issued by one is read by the others.
  [ -f "$RUN_DIR/secret_key" ] || python3 -c 'import secrets; print(secrets.token_urlsafe(48))' >"$RUN_DIR/secret_key"
  SECRET_KEY="$(cat "$RUN_DIR/secret_key")"
fi
export SECRET_KEY

say() { echo "run-cluster: $*"; }

start_services() {
  if [[ "$DATABASE_URL" == postgresql* ]] && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  if [[ "$BROADCAST_URL" == redis://127.0.0.1:6379* ]] && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    say "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
  fi
}

create_database() {
  # postgresql+asyncpg://user@host:port/name -> psql's URL without the driver.
  [[ "$DATABASE_URL" == postgresql* ]] || return 0
  local plain="postgresql://${DATABASE_URL#*://}" name="${DATABASE_URL##*/}"
  name="${name%%\?*}"
  local admin="${plain%/*}/postgres"
  if ! psql -q "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
    say "creating database $name"
    psql -q "$admin" -c "CREATE DATABASE \"$name\""
  fi
}

find_nginx() {
  NGINX="$(command -v nginx || true)"
  [ -n "$NGINX" ] || { [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx; } || true
  if [ -z "$NGINX" ]; then
    say "installing nginx (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
    NGINX=/usr/sbin/nginx
  fi
}

pids=()
stop_all() {
  trap - INT TERM EXIT
  say "stopping"
  # SIGTERM: each instance closes its sockets with 1012 and finishes in-flight requests.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  say "stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT

start_services
create_database
find_nginx
[ -x .venv/bin/chat-backend ] || make install
say "migrating"
.venv/bin/chat-backend migrate

upstreams=""
n=0
IFS=',' read -ra ports <<<"$INSTANCE_PORTS"
for port in "${ports[@]}"; do
  n=$((n + 1))
  .venv/bin/chat-backend serve --host 127.0.0.1 --port "$port" >"$RUN_DIR/instance-$n.log" 2>&1 &
  pids+=("$!")
  say "instance $n: pid $! on 127.0.0.1:$port, log $RUN_DIR/instance-$n.log"
  upstreams+="        server 127.0.0.1:$port max_fails=1 fail_timeout=5s;"$'\n'
done
for port in "${ports[@]}"; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.2
  done
done

sed -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@LISTEN@|127.0.0.1:$PORT|g" scripts/nginx-cluster.conf \
  | awk -v upstreams="$upstreams" '{ if ($0 == "@UPSTREAMS@") printf "%s", upstreams; else print }' \
  >"$RUN_DIR/nginx.conf"
"$NGINX" -t -q -c "$RUN_DIR/nginx.conf" -p "$RUN_DIR"
"$NGINX" -c "$RUN_DIR/nginx.conf" -p "$RUN_DIR" -g 'daemon off;' &
pids+=("$!")
say "nginx: pid $! on 127.0.0.1:$PORT"
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
say "ready: http://127.0.0.1:$PORT/graphql (run dir $RUN_DIR)"
# Until Ctrl-C, or until any process ends (an instance killed by a test is not the end).
while true; do
  sleep 1 &
  wait $! || true
done
