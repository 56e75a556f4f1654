#!/usr/bin/env bash
# One command, end to end, on a fresh machine: installs the peers (nginx +
# Nchan, Pushpin, the Node.js baseline's packages; only when --targets names
# one) and matplotlib, builds
# Herald and the load generator in release mode, runs every scenario against
# every server, prints the table and draws docs/bench.png.
#
#   bench/run.sh            # the full run (about 40 minutes on 2 cores)
#   bench/run.sh --quick    # small sizes, short runs (a few minutes)
#   bench/run.sh --only b-fanout-10000 --targets herald,nchan1
#   bench/run.sh --only e-room --targets herald    # Herald only: no peers installed
#   bench/run.sh --only f- --targets herald        # hooks: through them against without
#   bench/run.sh --only g- --targets herald,socketio   # game/cursors rooms beside Socket.IO 4
#
# Every server listens on 127.0.0.1 and every connection stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

# The peers are installed only when --targets names one (default: all targets):
# Debian packages for Nchan and Pushpin, `npm ci` for the Node baseline,
# Pushpin's origin and Socket.IO.
targets="herald,herald1,nchan1,nchan2,node,pushpin,ceiling,socketio"
args=("$@")
for i in "${!args[@]}"; do
    case "${args[$i]}" in
        --targets) targets="${args[$((i + 1))]:-}" ;;
        --targets=*) targets="${args[$i]#--targets=}" ;;
    esac
done
nchan=0 pushpin=0 nodejs=0
IFS=, read -ra wanted <<<"$targets"
for t in "${wanted[@]}"; do
    case "$t" in
        herald | herald1 | herald-base | ceiling) ;;
        nchan*) nchan=1 ;;
        pushpin) pushpin=1 nodejs=1 ;;
        *) nodejs=1 ;; # node, socketio
    esac
done

need_apt=()
if [ "$nchan" = 1 ]; then
    command -v nginx >/dev/null || need_apt+=(nginx)
    [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || need_apt+=(libnginx-mod-nchan)
fi
if [ "$pushpin" = 1 ]; then
    command -v pushpin >/dev/null || need_apt+=(pushpin)
    command -v zurl >/dev/null || need_apt+=(zurl)
fi
if [ "$nodejs" = 1 ]; then
    command -v node >/dev/null || need_apt+=(nodejs npm)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "==> apt-get install ${need_apt[*]}"
    apt-get update -q
    # Install without starting the packages' own services (nginx on :80, Pushpin on :7999).
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

if [ "$nodejs" = 1 ]; then
    echo "==> npm ci (bench/node)"
    (cd bench/node && npm ci --no-audit --no-fund --silent)
fi

if ! python3 -c 'import matplotlib' 2>/dev/null; then
    echo "==> pip install matplotlib"
    python3 -m pip install -q matplotlib
fi

echo "==> cargo build --release -p herald -p herald-bench"
cargo build --release -q -p herald -p herald-bench

python3 bench/run.py "$@"
name=latest
for i in "${!args[@]}"; do
    [ "${args[$i]}" = "--name" ] && name="${args[$((i + 1))]}"
done
python3 bench/report.py "bench/results/$name.jsonl" --chart docs/bench.png >/dev/null
# The (g) rooms table (Herald beside Socket.IO), which report.py does not draw.
python3 bench/run.py --game-table "bench/results/$name.jsonl" >/dev/null
echo "table: bench/results/$name.md   chart: docs/bench.png"
