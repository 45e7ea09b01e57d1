#!/usr/bin/env bash
# Starts a local Grafana that shows the TardBot ledger: the datasource and dashboards in this folder are
# provisioned, anonymous viewing is on, and the run overview is the home dashboard.
#
#   dashboards/start-grafana.sh [LEDGER]      # default: work/ledger.db; then open http://127.0.0.1:3000
#
# Needs Grafana (>= 10; `grafana` or `grafana-server` on PATH, home in $GRAFANA_HOME, default
# /usr/share/grafana) and the frser-sqlite-datasource plugin, which this installs into the state directory
# on first start (network needed once). Grafana's own state (its database, logs, plugins) lives in
# $TARDBOT_GRAFANA_STATE, default `grafana/` next to the ledger. Port: $PORT (default 3000).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
ledger="${1:-work/ledger.db}"
if [[ ! -f "$ledger" ]]; then
    echo "error: no ledger at $ledger (run the pipeline first, or pass the ledger's path)" >&2
    exit 2
fi
ledger="$(cd "$(dirname "$ledger")" && pwd)/$(basename "$ledger")"
if [[ ! -w "$(dirname "$ledger")" ]]; then
    echo "warning: $(dirname "$ledger") is not writable: SQLite cannot create the WAL index (-shm) next to the ledger" >&2
fi
state="${TARDBOT_GRAFANA_STATE:-$(dirname "$ledger")/grafana}"
mkdir -p "$state/plugins" "$state/log"

export TARDBOT_LEDGER="$ledger"
export TARDBOT_DASHBOARDS="$here/json"
export GF_PATHS_PROVISIONING="$here/provisioning"
export GF_PATHS_DATA="$state"
export GF_PATHS_LOGS="$state/log"
export GF_PATHS_PLUGINS="$state/plugins"
export GF_SERVER_HTTP_ADDR="${GF_SERVER_HTTP_ADDR:-127.0.0.1}"
export GF_SERVER_HTTP_PORT="${PORT:-3000}"
export GF_AUTH_ANONYMOUS_ENABLED=true
export GF_AUTH_ANONYMOUS_ORG_ROLE=Viewer
export GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH="$here/json/overview.json"
export GF_ANALYTICS_REPORTING_ENABLED=false
export GF_ANALYTICS_CHECK_FOR_UPDATES=false

grafana_home="${GRAFANA_HOME:-/usr/share/grafana}"
if command -v grafana >/dev/null 2>&1; then
    cli=(grafana cli) server=(grafana server)
elif command -v grafana-server >/dev/null 2>&1; then
    cli=(grafana-cli) server=(grafana-server)
else
    echo "error: Grafana is not installed (neither \`grafana\` nor \`grafana-server\` is on PATH)" >&2
    exit 2
fi

if [[ ! -d "$state/plugins/frser-sqlite-datasource" ]]; then
    "${cli[@]}" --homepath "$grafana_home" --pluginsDir "$state/plugins" plugins install frser-sqlite-datasource
fi

echo "Grafana on http://$GF_SERVER_HTTP_ADDR:$GF_SERVER_HTTP_PORT/ showing $ledger" >&2
exec "${server[@]}" --homepath "$grafana_home"
