#!/usr/bin/env bash
# Starts etcd and a 3-node geecache cluster on 127.0.0.1 for a person to try.
#   bash tests/start_servers.sh            # nodes on 8001, 8002, 8003; etcd on 2379
# Ctrl-C stops everything. Logs and etcd's data live in a temp dir printed at start.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v etcd >/dev/null || { echo "etcd is missing: apt-get install etcd-server etcd-client"; exit 1; }
bash plugins/build.sh
cargo build --release -p geecache-host

# Every node signs its peer requests with the same cluster secret (docs/security.md): yours
# from GEECACHE_CLUSTER_SECRET, else a fresh random one for this run.
export GEECACHE_CLUSTER_SECRET="${GEECACHE_CLUSTER_SECRET:-$(head -c 32 /dev/urandom | base64)}"

work=$(mktemp -d)
echo "logs and etcd data: $work"
pids=()
cleanup() {
  # Nodes first (they deregister from etcd on SIGTERM), then etcd.
  for pid in "${pids[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
  kill -TERM "${pids[0]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

etcd --name geecache-demo --data-dir "$work/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster geecache-demo=http://127.0.0.1:2380 >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

for port in 8001 8002 8003; do
  ./target/release/geecache-host --plugin plugins/db_getter.wasm --port "$port" \
    --etcd-endpoints http://127.0.0.1:2379 >"$work/node-$port.log" 2>&1 &
  pids+=($!)
done
sleep 1
cat <<EOT
cluster up:
  curl "localhost:8001/api?key=Tom"
  curl "localhost:8002/api/v1/cluster"
  prometheus --config.file=deploy/prometheus.yml    # scrapes these three nodes, with the alerts
  ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 get --prefix /geecache/registry/
Ctrl-C to stop.
EOT
wait "${pids[1]}"
