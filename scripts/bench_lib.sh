# shellcheck shell=bash disable=SC2034  # sets variables for the script that sources it
# Sourced by the benchmark scripts: which debris to measure, and with which python.
# Needs REPO (the checkout). find_debris sets DEBRIS (command array), PY, HOW (one line for the
# report) and DEBRIS_PKG, and byte-compiles the package once. start_rgw starts a throw-away RGW.

resolve_shim() { # a pyenv shim is a bash script; measure the real entry point instead
    local p=$1
    if [[ "$p" == */shims/* ]] && command -v pyenv >/dev/null; then
        pyenv which "$(basename "$p")" 2>/dev/null || echo "$p"
    else
        echo "$p"
    fi
}

find_debris() {
    local on_path shebang debris_bin
    if command -v debris >/dev/null; then
        on_path=$(command -v debris)
        debris_bin=$(resolve_shim "$on_path")
        DEBRIS=("$debris_bin")
        PY=""
        shebang=$(head -n1 "$debris_bin")
        if [[ "$shebang" == '#!'*python* ]]; then
            PY=${shebang#\#!}
            PY=${PY%% *}
        fi
        [[ -n "$PY" && -x "$PY" ]] || PY=$(resolve_shim "$(command -v python3)")
        HOW="debris on PATH: $on_path -> $debris_bin"
    else
        PY=$(resolve_shim "$(command -v python3)")
        export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
        DEBRIS=("$PY" -m debris)
        HOW="not installed: $PY -m debris with PYTHONPATH=$REPO"
    fi
    DEBRIS_PKG=$("$PY" -c 'import debris, os; print(os.path.dirname(debris.__file__))')
    # An editable install never byte-compiles, and PYTHONDONTWRITEBYTECODE (set on some machines)
    # stops the import system from caching: compile once, as a regular install would.
    "$PY" -m compileall -q "$DEBRIS_PKG" >/dev/null
}

# start_rgw DIR LOG: a single-node Ceph with radosgw on free 127.0.0.1 ports (scripts/ceph.sh),
# its state in DIR. Sets ENDPOINT and exports the AWS_* credentials for it (nothing else from the
# caller's AWS environment leaks in). The caller stops it with `bash scripts/ceph.sh stop DIR`,
# which signals only the PIDs it recorded. Returns non-zero (after showing LOG) if it did not start.
start_rgw() {
    local dir=$1 log=$2 port mon_port env_file
    read -r port mon_port < <("$PY" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()')
    env_file="$dir.env"
    if ! CEPH_MON_PORT=$mon_port CEPH_OWNER_PID=$$ bash "$HERE/ceph.sh" start "$dir" "$port" >"$env_file" 2>"$log"; then
        tail -n 40 "$log" >&2
        return 1
    fi
    ENDPOINT=$(sed -n 's/^ENDPOINT=//p' "$env_file")
    AWS_ACCESS_KEY_ID=$(sed -n 's/^ACCESS_KEY=//p' "$env_file")
    AWS_SECRET_ACCESS_KEY=$(sed -n 's/^SECRET_KEY=//p' "$env_file")
    RGW_BRINGUP=$(sed -n 's/^BRINGUP_SECONDS=//p' "$env_file")
    [[ -n "$ENDPOINT" && -n "$AWS_ACCESS_KEY_ID" && -n "$AWS_SECRET_ACCESS_KEY" ]] || {
        echo "ceph.sh printed no ENDPOINT/ACCESS_KEY/SECRET_KEY" >&2
        return 1
    }
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    export AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
    unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
}

