#!/usr/bin/env bash
# Start a local Ray head node for trying `ray job submit` on one machine; Ctrl-C (or SIGTERM)
# stops it and every Ray process it started. Ports and the temp dir avoid Ray's defaults, so it
# can run next to another local Ray cluster.
#
#   cluster/local_head.sh                      # in one terminal (or: cluster/local_head.sh &)
#   export RAY_ADDRESS=http://127.0.0.1:8275   # in another, then:
#   ray job submit --working-dir . -- python -m pipelines.generate configs/generate.yaml \
#       input=prompts.parquet output=out/
#
# Settings (environment): RAY_HEAD_PORT (6390), RAY_DASHBOARD_PORT (8275), RAY_CLIENT_PORT
# (10011), RAY_AGENT_PORT (52375), RAY_TEMP_DIR (/tmp/tandem-ray), RAY_NUM_CPUS (all cores).
# Extra arguments go to `ray start` as they are (e.g. --num-gpus=1 --resources='{"verifier": 1}').
set -euo pipefail

# A local head has no traffic to drain: stop at once on SIGTERM (Ray waits up to 30 s otherwise).
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}

head_port=${RAY_HEAD_PORT:-6390}
dashboard_port=${RAY_DASHBOARD_PORT:-8275}
client_port=${RAY_CLIENT_PORT:-10011}
agent_port=${RAY_AGENT_PORT:-52375}
temp_dir=${RAY_TEMP_DIR:-/tmp/tandem-ray}
cpus=()
if [[ -n "${RAY_NUM_CPUS:-}" ]]; then
  cpus=(--num-cpus="$RAY_NUM_CPUS")
fi

echo "Ray head: jobs at http://127.0.0.1:${dashboard_port} (export RAY_ADDRESS=http://127.0.0.1:${dashboard_port})"
echo "Ray 2.60 turns token authentication on for ray start: run the ray CLI with RAY_AUTH_MODE=token."
exec ray start --head --block \
  --port="$head_port" \
  --dashboard-host=127.0.0.1 \
  --dashboard-port="$dashboard_port" \
  --ray-client-server-port="$client_port" \
  --dashboard-agent-listen-port="$agent_port" \
  --temp-dir="$temp_dir" \
  --disable-usage-stats \
  "${cpus[@]}" \
  "$@"
