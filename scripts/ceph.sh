#!/usr/bin/env bash
# Throw-away single-node Ceph (1 mon, 1 memstore OSD, 1 radosgw) for tests.
#
# Why this exists: debris deletes incomplete S3 multipart uploads and must be
# tested against a store that behaves like the real one: real Initiated times
# on incomplete uploads, and quotas that answer 403 QuotaExceeded.  moto fakes
# the first and has no quotas, so the integration tests need a real radosgw.
# This script builds one in about two seconds, entirely inside one directory,
# so that several can run side by side and nothing outside DIR is read or
# written (no /etc/ceph, /var/lib/ceph, /var/run/ceph, systemd).
#
# Usage:
#   scripts/ceph.sh start DIR [PORT]   bring a cluster up in DIR (created if
#                                      missing, must not hold a running one);
#                                      radosgw listens on 127.0.0.1:PORT
#                                      (default 7480).  Prints KEY=VALUE lines
#                                      on stdout, progress and timings on stderr.
#   scripts/ceph.sh stop DIR           SIGTERM each PID listed in DIR/pids
#                                      (newest first), SIGKILL it if still
#                                      there after ~3 s; then remove DIR/pids
#                                      (nothing else).
#
# Environment:
#   CEPH_MON_PORT      mon port (msgr2 only); default PORT+1.  Set it when PORT
#                      was picked as "some free port", since PORT+1 may be taken.
#   CEPH_WAIT_TIMEOUT  seconds allowed for each wait step (default 60).
#   CEPH_KEEP_ON_FAILURE=1  leave daemons running when start fails (debugging);
#                      by default a failed start stops what it started.
#   CEPH_OWNER_PID     if set, a watchdog (listed in DIR/pids) SIGKILLs the
#                      daemons once that process is gone, or once any daemon
#                      has died (a cluster without its mon spins at ~90% CPU).
#                      Test harnesses set it so a killed test run leaks nothing.
#
# The OSD binds ports in Ceph's default 6800-7300 range; it picks free ones by
# itself, so two clusters never collide there.
set -euo pipefail
trap '' PIPE

readonly ACCESS_KEY=debris-access
readonly SECRET_KEY=debris-secret
readonly S3_UID=debris
SELF=$(readlink -f -- "$0")
readonly SELF

usage() {
    sed -n '/^# Usage:/,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# log never fails: if whoever reads our stderr has gone away, we still want to
# reach the cleanup code rather than die of SIGPIPE/EPIPE half-way.
log() { printf '[ceph.sh %s] %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2 2>/dev/null || true; }

now() { date +%s.%N; }

# elapsed START -> seconds since START with millisecond precision
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.2f", e - s }'; }

die() {
    log "ERROR: $*"
    exit 1
}

# show_log FILE...: print the tail of each existing log so a failure explains itself.
show_log() {
    local f
    for f in "$@"; do
        if [[ -s "$f" ]]; then
            printf -- '----- last 40 lines of %s -----\n' "$f" >&2
            tail -n 40 -- "$f" >&2
        fi
    done
}

# wait_for DESC PID TIMEOUT LOGS CMD...: retry CMD until it succeeds.  Fail
# at once if daemon PID has exited, or after TIMEOUT seconds; either way print
# the tail of LOGS (space-separated paths) so the failure explains itself.
wait_for() {
    local desc=$1 pid=$2 timeout=$3 logs=$4
    shift 4
    local start deadline why=
    start=$(now)
    deadline=$(awk -v s="$start" -v t="$timeout" 'BEGIN { printf "%d", s + t }')
    until "$@" >/dev/null 2>&1; do
        if [[ -n "${CEPH_OWNER_PID:-}" ]] && ! alive "$CEPH_OWNER_PID"; then
            why="owner $CEPH_OWNER_PID is gone"
        elif ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" && why="daemon $pid exited (status 0)" || why="daemon $pid exited (status $?)"
        elif (($(date +%s) >= deadline)); then
            why="timed out after ${timeout}s"
        fi
        if [[ -n "$why" ]]; then
            log "$why waiting for: $desc"
            sleep 0.2 # let the daemon's log thread flush
            # shellcheck disable=SC2086  # logs is a deliberate word list of paths
            show_log $logs
            die "start failed (waiting for $desc)"
        fi
        sleep 0.1
    done
    log "$desc: ok after $(elapsed "$start")s"
}

# pid_is_ours PID DIR: true if PID is alive (not a zombie) and its command
# line names DIR/ceph.conf, so a recycled PID is never signalled.
pid_is_ours() {
    local pid=$1 dir=$2 cmdline
    alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    [[ "$cmdline" == *"$dir/ceph.conf"* ]]
}

# alive PID: the process exists and is not a zombie.
alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z ]]
}

# cmd_watchdog CONF OWNER_PID: see CEPH_OWNER_PID above.  Started before the
# first daemon, so it also covers a start whose caller dies half-way.  CONF
# (DIR/ceph.conf) is on our command line so pid_is_ours (and so cmd_stop)
# recognises us.  Daemon PIDs are picked up from DIR/pids as they appear and
# remembered: DIR may be deleted (e.g. by pytest's tmpdir rotation) while the
# daemons still run.
cmd_watchdog() {
    local conf=$1 owner=$2 dir pid name why='' i
    dir=${conf%/ceph.conf}
    local -A known=()
    log "watching owner $owner and the daemons in $dir/pids"
    while [[ -z "$why" ]]; do
        sleep 1
        if [[ -r "$dir/pids" ]]; then
            while read -r pid name; do
                [[ "$pid" =~ ^[0-9]+$ && "$name" != watchdog && -z "${known[$pid]:-}" ]] || continue
                known[$pid]=$name
                log "watching $name ($pid)"
            done <"$dir/pids" || true
        fi
        alive "$owner" || why="owner $owner is gone"
        for i in "${!known[@]}"; do
            pid_is_ours "$i" "$dir" || why="${why:-${known[$i]} ($i) has died}"
        done
    done
    log "$why: SIGKILL the rest"
    for i in "${!known[@]}"; do
        if pid_is_ours "$i" "$dir"; then kill -KILL "$i" 2>/dev/null || true; fi
    done
}

# stop_one PID NAME DIR: SIGTERM, up to ~3 s for a clean exit, then SIGKILL.
stop_one() {
    local pid=$1 name=$2 dir=$3 i
    if ! pid_is_ours "$pid" "$dir"; then
        log "$name ($pid) already gone"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        pid_is_ours "$pid" "$dir" || return 0
        sleep 0.1
    done
    log "$name ($pid) still running 3 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pid_is_ours "$pid" "$dir" || return 0
        sleep 0.1
    done
    log "$name ($pid) survived SIGKILL"
    return 1
}

cmd_stop() {
    local dir=$1
    [[ -d "$dir" ]] || die "no such directory: $dir"
    dir=$(cd -- "$dir" && pwd -P)
    local pidfile="$dir/pids"
    if [[ ! -f "$pidfile" ]]; then
        log "no $pidfile: nothing to stop"
        return 0
    fi
    local t0 pid name failed=0
    t0=$(now)
    # The watchdog first (it would SIGKILL the rest as soon as one daemon is
    # gone), then reverse start order (radosgw, OSD, mon): an OSD told to stop
    # reports to the mon, and waits up to 5 s for it if the mon is already gone.
    while read -r pid name; do
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        stop_one "$pid" "$name" "$dir" || failed=1
    done < <(awk '$2 == "watchdog"' "$pidfile"; tac -- "$pidfile" | awk '$2 != "watchdog"')
    ((failed == 0)) || die "some daemons survived SIGKILL; $pidfile kept"
    rm -f -- "$pidfile"
    log "stopped in $(elapsed "$t0")s"
}

# EXIT trap of cmd_start, disarmed once the cluster is up.
STARTING_DIR=
on_start_exit() {
    local rc=$?
    if ((rc != 0)) && [[ -n "$STARTING_DIR" ]]; then
        if [[ "${CEPH_KEEP_ON_FAILURE:-0}" == 1 ]]; then
            log "start failed; CEPH_KEEP_ON_FAILURE=1: daemons left running (scripts/ceph.sh stop $STARTING_DIR)"
        else
            log "start failed: stopping the daemons started so far"
            cmd_stop "$STARTING_DIR" || true
        fi
    fi
    exit "$rc"
}

valid_port() { [[ "$1" =~ ^[0-9]+$ ]] && (($1 > 0 && $1 < 65536)); }

cmd_start() {
    local dir=$1 port=${2:-7480}
    valid_port "$port" || die "bad PORT: $port"
    local mon_port=${CEPH_MON_PORT:-$((port + 1))}
    valid_port "$mon_port" || die "bad CEPH_MON_PORT: $mon_port"
    ((mon_port != port)) || die "mon port and radosgw port are both $port"
    local timeout=${CEPH_WAIT_TIMEOUT:-60}
    [[ "$timeout" =~ ^[0-9]+$ ]] || die "bad CEPH_WAIT_TIMEOUT (whole seconds): $timeout"

    local bin
    for bin in monmaptool ceph-authtool ceph-mon ceph-osd radosgw radosgw-admin ceph curl; do
        command -v "$bin" >/dev/null 2>&1 || die "required binary not found on PATH: $bin"
    done

    mkdir -p -- "$dir"
    dir=$(cd -- "$dir" && pwd -P)
    if [[ -f "$dir/pids" ]]; then
        die "$dir/pids exists: a cluster may be running there (scripts/ceph.sh stop $dir first)"
    fi
    if [[ -e "$dir/ceph.conf" ]]; then
        die "$dir already holds a cluster; use a fresh directory"
    fi

    # sun_path holds 107 bytes; past that Ceph runs on without admin sockets.
    local asok="$dir/run/ceph-client.rgw.asok"
    ((${#asok} <= 107)) || log "warning: $asok is longer than 107 bytes: daemons will have no admin sockets"

    local t0 conf="$dir/ceph.conf" keyring="$dir/keyring" logdir="$dir/log"
    t0=$(now)
    mkdir -p -- "$dir/mon" "$dir/osd" "$dir/run" "$logdir"
    : >"$dir/pids"

    # On any failure (or ^C), stop whatever was started so no daemon outlives
    # a failed start (unless asked to keep them for debugging).
    STARTING_DIR=$dir
    trap on_start_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    if [[ -n "${CEPH_OWNER_PID:-}" ]]; then
        if ! [[ "$CEPH_OWNER_PID" =~ ^[0-9]+$ ]] || ! alive "$CEPH_OWNER_PID"; then
            die "CEPH_OWNER_PID=$CEPH_OWNER_PID is not a running process"
        fi
        # ceph.conf must exist by name for the watchdog's command line; it is
        # written for real below.
        : >"$conf"
        bash "$SELF" _watchdog "$conf" "$CEPH_OWNER_PID" </dev/null >"$logdir/watchdog.log" 2>&1 &
        echo "$! watchdog" >>"$dir/pids"
    fi

    local fsid
    fsid=$(</proc/sys/kernel/random/uuid)
    # $cluster/$name/$id are expanded by Ceph itself, not by the shell.
    cat >"$conf" <<EOF
# Generated by scripts/ceph.sh for a throw-away test cluster. Do not reuse.
[global]
fsid = $fsid
mon initial members = a
mon host = [v2:127.0.0.1:$mon_port]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false

# auth none; radosgw then also needs crc mode, or it retries forever
# ("get_initial_auth_request returned -13").
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
keyring = $keyring

# everything under DIR; daemons' admin sockets are run dir/\$cluster-\$name.asok
run dir = $dir/run
pid file = $dir/run/\$cluster-\$name.pid
log file = $logdir/\$cluster-\$name.log
mon data = $dir/mon/\$cluster-\$id
osd data = $dir/osd/\$cluster-\$id
crash dir = $dir/crash
log to stderr = false
err to stderr = true
mon cluster log file = $logdir/\$cluster.log

# single OSD, no replication, few PGs, no mgr
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd objectstore = memstore
memstore device bytes = 2147483648

# fast paxos: bring-up ~13 s -> ~2 s, bucket creation ~2 s -> ~0.2 s
paxos propose interval = 0.05
paxos min wait = 0.01

# quotas enforced and reported immediately
rgw bucket quota ttl = 0
rgw user quota bucket sync interval = 0
rgw user quota sync interval = 0

[client.admin]
# no admin socket for short-lived CLI calls (ceph, radosgw-admin): nothing to inspect there
admin socket =

[client.rgw]
# a fixed name (clients default to one with their pid in it)
admin socket = $dir/run/\$cluster-\$name.asok
# tcp_nodelay: without it every response with a body waits ~45 ms (Nagle)
rgw frontends = beast endpoint=127.0.0.1:$port tcp_nodelay=1
log file = $logdir/radosgw.log
EOF

    # Auth is off, but mkfs still insists on a keyring.
    ceph-authtool --create-keyring "$keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null

    local monmap="$dir/monmap"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$monmap" --keyring "$keyring" \
        >"$logdir/mon-mkfs.out" 2>&1 || { show_log "$logdir/mon-mkfs.out"; die "ceph-mon --mkfs failed"; }

    # Daemons run in the foreground (-f) from our shell so that $! is their
    # real PID; stdio goes to files so a caller capturing our stdout is not
    # held open by them.
    ceph-mon -c "$conf" -i a -f </dev/null >"$logdir/mon.a.out" 2>&1 &
    echo "$! mon.a" >>"$dir/pids"
    # --foreground: stay in our process group, so a group-wide SIGTERM reaches the CLI too
    local ceph=(timeout --foreground 10 ceph -c "$conf" --connect-timeout 5)
    wait_for "mon.a on 127.0.0.1:$mon_port" "$!" "$timeout" \
        "$logdir/mon.a.out $logdir/ceph-mon.a.log" "${ceph[@]}" mon stat

    local osd_uuid osd_id
    osd_uuid=$(</proc/sys/kernel/random/uuid)
    osd_id=$("${ceph[@]}" osd new "$osd_uuid") || die "ceph osd new failed"
    [[ "$osd_id" == 0 ]] || die "expected osd id 0, got '$osd_id'"
    mkdir -p -- "$dir/osd/ceph-0"
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" \
        >"$logdir/osd-mkfs.out" 2>&1 || { show_log "$logdir/osd-mkfs.out" "$logdir/ceph-osd.0.log"; die "ceph-osd --mkfs failed"; }
    ceph-osd -c "$conf" -i 0 -f </dev/null >"$logdir/osd.0.out" 2>&1 &
    echo "$! osd.0" >>"$dir/pids"
    osd_up() { "${ceph[@]}" osd dump | grep -q '^osd\.0 up'; }
    wait_for "osd.0 up" "$!" "$timeout" "$logdir/osd.0.out $logdir/ceph-osd.0.log $logdir/ceph-mon.a.log" osd_up

    radosgw -c "$conf" -n client.rgw -f </dev/null >"$logdir/radosgw.out" 2>&1 &
    echo "$! client.rgw" >>"$dir/pids"
    local endpoint="http://127.0.0.1:$port"
    # curl -f: only a 2xx counts; anonymous GET / answers 200 with an empty bucket list.
    wait_for "radosgw HTTP 200 on $endpoint/" "$!" "$timeout" \
        "$logdir/radosgw.out $logdir/radosgw.log" curl -fsS -o /dev/null --max-time 2 "$endpoint/"

    local t_user
    t_user=$(now)
    radosgw-admin -c "$conf" user create --uid "$S3_UID" --display-name "debris tests" \
        --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" >"$logdir/user-create.out" 2>&1 ||
        { show_log "$logdir/user-create.out"; die "radosgw-admin user create failed"; }
    log "S3 user $S3_UID: ok after $(elapsed "$t_user")s"

    local total
    total=$(elapsed "$t0")
    log "cluster up in ${total}s (pids: $(awk '{ printf "%s ", $1 }' "$dir/pids"))"
    {
        echo "ENDPOINT=$endpoint"
        echo "ACCESS_KEY=$ACCESS_KEY"
        echo "SECRET_KEY=$SECRET_KEY"
        echo "CEPH_CONF=$conf"
        echo "MON_PORT=$mon_port"
        echo "BRINGUP_SECONDS=$total"
    } | tee "$dir/env"
    trap - EXIT INT TERM
    STARTING_DIR=
}

main() {
    (($# >= 1)) || usage
    case "$1" in
    start)
        (($# == 2 || $# == 3)) || usage
        cmd_start "$2" "${3:-7480}"
        ;;
    stop)
        (($# == 2)) || usage
        cmd_stop "$2"
        ;;
    _watchdog)
        (($# == 3)) || usage
        cmd_watchdog "$2" "$3"
        ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
    esac
}

main "$@"
