# shellcheck shell=bash
# procs.sh: process helpers shared by the benchmark scripts (sourced, not run). The caller sets
# GRACE, the seconds a process gets to exit after SIGINT before it is killed.

# alive PID: PID exists and has not exited (a zombie waiting to be reaped counts as exited).
alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

# stop_pids PID...: SIGINT, then SIGKILL for whatever is still running after GRACE seconds.
stop_pids() {
    local pid i running
    (($#)) || return 0
    kill -INT "$@" 2>/dev/null || true
    for ((i = 0; i < GRACE * 10; i++)); do
        running=0
        for pid in "$@"; do
            if alive "$pid"; then
                running=1
                break
            fi
        done
        ((running)) || return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
}
