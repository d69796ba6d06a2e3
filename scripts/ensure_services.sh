#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis and RabbitMQ answer on 127.0.0.1 for the test suite: starts them when
# they are installed but stopped; with CI=true a missing service is a hard failure, never a skip.
set -euo pipefail

fail() { echo "ERROR: $*" >&2; exit 1; }

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
# The AMQP port accepting connections (the consumer tests connect as guest/guest).
rabbitmq_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "Starting PostgreSQL..."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  fi
  pg_up || fail "PostgreSQL is not reachable at 127.0.0.1:5432 and could not be started."
fi

if ! redis_up; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "Starting Redis..."
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 1 30); do redis_up && break; sleep 1; done
  fi
  redis_up || fail "Redis is not reachable at 127.0.0.1:6379 and could not be started."
fi
if ! rabbitmq_up; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "Starting RabbitMQ..."
    service rabbitmq-server start >/dev/null 2>&1 || rabbitmq-server -detached || true
    for _ in $(seq 1 60); do rabbitmq_up && break; sleep 1; done
  fi
  rabbitmq_up || fail "RabbitMQ is not reachable at 127.0.0.1:5672 and could not be started."
fi
echo "PostgreSQL, Redis and RabbitMQ are up."
