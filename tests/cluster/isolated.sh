#!/usr/bin/env bash
# Run a command (pytest) in its own PID, network and mount namespaces, as the autoscaling test
# needs: ray.cluster_utils.AutoscalingCluster.start() and .shutdown() run `ray stop --force`,
# which kills every Ray process it can see. Inside, it sees only the processes started here
# (own /proc), reaches only a private loopback (own network), and writes Ray's session files
# to a private /tmp/ray (tmpfs), so other Ray clusters on this machine are untouched. Only
# /tmp/ray is covered: the rest of /tmp stays visible (a checkout or venv may live there).
#   bash tests/cluster/isolated.sh python -m pytest -q -m cluster tests/cluster/test_cluster_autoscale.py
# Needs root (or unprivileged user namespaces) and util-linux `unshare`, iproute2 `ip`.
set -euo pipefail
# The test checks that it runs in another PID namespace than this one, else it skips.
NCSTUDY_OUTER_PIDNS="$(readlink /proc/self/ns/pid)"
export NCSTUDY_OUTER_PIDNS
exec unshare --pid --fork --mount-proc --net --propagation private -- bash -c '
  set -euo pipefail
  ip link set lo up
  mkdir -p /tmp/ray
  mount -t tmpfs -o size=4g tmpfs /tmp/ray
  exec "$@"' isolated "$@"
