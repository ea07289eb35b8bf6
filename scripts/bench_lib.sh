# shellcheck shell=bash disable=SC2034  # sets variables for the script that sources it
# Sourced by the benchmark scripts: which debris to measure, and with which python.
# Needs REPO (the checkout). Sets DEBRIS (command array), PY, HOW (one line for the report) and
# DEBRIS_PKG, and byte-compiles the package once.

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
