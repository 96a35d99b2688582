# shellcheck shell=bash
# Shared by tests/envtest/up and tests/envtest/down (sourced, not run).

# The processes of one control plane, in start order. Each has a pid file DIR/pids/NAME.
# shellcheck disable=SC2034 # used by the scripts that source this file
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

# owned_pid DIR NAME: prints the pid recorded in DIR/pids/NAME and succeeds only while that process
# is alive (not a zombie) and its command line names DIR, so a recycled pid is never mistaken for
# ours and never signalled.
owned_pid() {
  local dir=$1 name=$2 pid arg
  [[ -r "$dir/pids/$name" ]] || return 1
  pid=$(<"$dir/pids/$name")
  [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
  while IFS= read -r -d '' arg; do
    if [[ "$arg" == "$dir" || "$arg" == *"$dir/"* ]]; then
      echo "$pid"
      return 0
    fi
  done 2>/dev/null <"/proc/$pid/cmdline" || true
  return 1
}
