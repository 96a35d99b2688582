# shellcheck shell=bash
# Process helpers shared by every script that starts and stops processes (tests/envtest/up and down,
# tests/demo/run and tests/demo/soak; sourced, not run), and the control plane's component list.
#
# The one rule they keep: nothing here calls `wait` on a process that has not been proven dead.
# A process is identified by its pid *and* its start time (field 22 of /proc/PID/stat, fixed at
# fork, unchanged by execve), recorded together in a pid file when it is started. Its state is read
# from /proc/PID/stat. /proc/PID/cmdline is never used: it reads empty while a freshly started child
# is inside execve, which made a live process look dead and hung scripts in `wait`.

# The processes of one control plane, in start order. Each has a pid file DIR/pids/NAME.
# shellcheck disable=SC2034 # used by the scripts that source this file
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

# proc_stat_field PID N: field N (3 = state, 22 = start time) of /proc/PID/stat, counted as proc(5)
# does; fails when there is no such process. The command name (field 2) may hold spaces and
# parentheses, so fields are counted after its last ')'.
proc_stat_field() {
  local stat rest
  local -a fields
  { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
  rest=${stat##*) }
  read -r -a fields <<<"$rest"
  ((${#fields[@]} >= $2 - 2)) || return 1
  echo "${fields[$2 - 3]}"
}

# proc_running PID: succeeds while PID exists and is not a zombie (a zombie has exited and only
# waits to be reaped).
proc_running() {
  local state
  state=$(proc_stat_field "$1" 3) || return 1
  [[ "$state" != Z && "$state" != X ]]
}

# record_pid FILE PID: writes "PID STARTTIME" to FILE, the identity owned_pid checks later.
record_pid() {
  local start
  start=$(proc_stat_field "$2" 22) || start=gone
  echo "$2 $start" >"$1"
}

# owned_pid DIR NAME: prints the pid recorded in DIR/pids/NAME and succeeds only while that very
# process runs: same pid, same start time (so a recycled pid is never mistaken for ours and never
# signalled), and not a zombie.
owned_pid() {
  local file=$1/pids/$2 pid start now
  [[ -r "$file" ]] || return 1
  read -r pid start <"$file" || true
  [[ "$pid" =~ ^[0-9]+$ && "${start:-}" =~ ^[0-9]+$ ]] || return 1
  now=$(proc_stat_field "$pid" 22) || return 1
  [[ "$now" == "$start" ]] || return 1
  proc_running "$pid" || return 1
  echo "$pid"
}

# reap PID: sets REAPED_STATUS to the exit status of our child PID once it has exited. It polls the
# process state until the child is a zombie or gone (bash reaps its children as they exit and keeps
# their status), and only then calls `wait`, so it never blocks on a live process. Not in a
# subshell: `$(reap ...)` would run where PID is no child. The caller bounds how long PID may run.
reap() {
  REAPED_STATUS=0
  while proc_running "$1"; do sleep 0.05; done
  wait "$1" 2>/dev/null || REAPED_STATUS=$?
}

# launch_component DIR PROGRAM NAME ARGS...: runs PROGRAM ARGS... in the background, detached from
# our stdin/stdout/stderr (a caller reading our output must see EOF when we return), log in
# DIR/logs/NAME.log, pid in DIR/pids/NAME, and the whole command line (NUL-separated) in
# DIR/pids/NAME.cmd, so that tests/envtest/restart starts it again exactly so.
launch_component() {
  local dir=$1 program=$2 name=$3
  shift 3
  echo "--- $(date -u +%FT%TZ) $name $*" >>"$dir/logs/$name.log"
  printf '%s\0' "$program" "$@" >"$dir/pids/$name.cmd"
  "$program" "$@" </dev/null >>"$dir/logs/$name.log" 2>&1 &
  record_pid "$dir/pids/$name" $!
}
