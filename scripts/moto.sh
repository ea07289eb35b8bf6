#!/usr/bin/env bash
# A throw-away moto S3 server on 127.0.0.1, for trying debris against S3 by hand.
# (The tests start their own through tests/ceph.py:MotoServer.)
#   scripts/moto.sh start DIR [PORT]   start it (PID in DIR/pid); prints ENDPOINT=...
#   scripts/moto.sh stop DIR           stop exactly that PID
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[[ -n $cmd && -n $dir ]] || { sed -n '2,5p' "$0" >&2; exit 2; }
PY=${PYTHON:-python3}

case $cmd in
start)
    port=${3:-5555}
    mkdir -p "$dir"
    if [[ -f $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        echo "moto.sh: already running (pid $(cat "$dir/pid"))" >&2
        exit 1
    fi
    "$PY" -m moto.server -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 100); do
        if "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "http://127.0.0.1:$port/" 2>/dev/null; then
            echo "ENDPOINT=http://127.0.0.1:$port"
            echo "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing (any values work)"
            exit 0
        fi
        kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
        sleep 0.1
    done
    echo "moto.sh: moto did not come up; log:" >&2
    tail -n 20 "$dir/moto.log" >&2
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    exit 1
    ;;
stop)
    [[ -f $dir/pid ]] || { echo "moto.sh: no $dir/pid" >&2; exit 1; }
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
    ;;
*)
    sed -n '2,5p' "$0" >&2
    exit 2
    ;;
esac
