#!/usr/bin/env bash
# Install everything mschedule's demo and tests need on a fresh Debian/Ubuntu machine:
# mosquitto + mosquitto-clients, nats-server and postgresql (apt-get, when missing), a virtualenv at $VENV with the
# package and its test extras. Safe to run again: it skips what is already there.
#   BROWSER=1 also installs Debian's chromium for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)  # the NATS-cluster tests (MQTT 3.1.1)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)  # docs/protocol.md decodes results with jq (tested)
# tests/partition/ makes network namespaces and blackholes a veth (ip, tc)
{ command -v ip && command -v tc; } >/dev/null 2>&1 || [ -x /usr/sbin/tc ] || need_apt+=(iproute2)
# tests/master/test_pg*.py and the HA failover tests start a private PostgreSQL (harness/postgres.py)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ "${BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "bootstrap: need root (or sudo) to apt-get install ${need_apt[*]}; install them and re-run" >&2
        exit 1
    fi
    $SUDO apt-get update -qq || { echo "bootstrap: apt-get update failed" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
        || { echo "bootstrap: apt-get install ${need_apt[*]} failed" >&2; exit 1; }
    # Debian starts mosquitto (and nats-server, postgresql) as services on install; mschedule never uses those.
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.mschedule-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/bootstrap.sh -nt "$stamp" ]; then
    # quietly: no build-tool warning boxes (errors still fail the import check below)
    scripts/pip-install-quiet.sh "$VENV/bin/python" --upgrade pip
    # editable_mode=compat: a path entry in a .pth. setuptools' default ("strict") installs
    # an import finder whose own imports (pathlib and what it pulls in) cost every Python
    # start in this venv ~25 ms on a 2-core machine: the CLI's, the agent's, the master's.
    scripts/pip-install-quiet.sh "$VENV/bin/python" -e '.[master,test]' --config-settings editable_mode=compat
    "$VENV/bin/python" -c 'import mschedule_agent, paho.mqtt, orjson, netifaces, tenacity, aiohttp, psycopg, pytest' \
        || { echo "bootstrap: python dependencies did not install" >&2; exit 1; }
    touch "$stamp"
fi
# Byte-code for the project's modules, where Python would write it on first import but an
# environment may forbid it (PYTHONDONTWRITEBYTECODE=1): compiling cli.py alone at every
# start was ~30 ms of `mschedule`'s. Only changed files are compiled again.
"$VENV/bin/python" -m compileall -q mschedule_agent mschedule_master >/dev/null \
    || echo "bootstrap: could not write byte-code (the programs still run, only start slower)" >&2
