#!/usr/bin/env bash
# Shared by scripts/start-engine and scripts/stop-engine (sourced), and the entry point that runs a
# second engine's dockerd inside its own mount namespace (executed: `engine-lib.sh run-dockerd ENV`).
#
# A second engine N with store S (overlay2 | containerd) is named docker-N-S and lives at:
#   rootfs (cached, shared by both stores, read-only while in use)
#                ${XDG_CACHE_HOME:-~/.cache}/pytorch-cuda/engines/docker-N-<pins hash>/rootfs
#   data root    /var/lib/pytorch-cuda-engines/docker-N-S        (images; kept unless --purge)
#   run dir      /run/pytorch-cuda-engines/docker-N-S/
#                  docker.sock   the engine's socket (DOCKER_HOST=unix://…)
#                  exec/         dockerd --exec-root (its managed containerd's state is under it)
#                  dockerd.pid   dockerd --pidfile
#                  daemon.json   dockerd --config-file
#                  resolv.conf   what the engine's containers resolve names with
#                  engine.env    what start-engine set up (read by stop-engine)
#   log          /var/log/pytorch-cuda-engines/docker-N-S.log
# PYTORCH_CUDA_ENGINES_DATA, PYTORCH_CUDA_ENGINES_RUN, PYTORCH_CUDA_ENGINES_LOG move those three
# places; PYTORCH_CUDA_ENGINES_MANIFEST reads other pins than manifests/engines.yaml.

ENGINE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$ENGINE_LIB_DIR/.." && pwd)
ENGINES_MANIFEST=${PYTORCH_CUDA_ENGINES_MANIFEST:-$REPO_ROOT/manifests/engines.yaml}
ENGINES_DATA=${PYTORCH_CUDA_ENGINES_DATA:-/var/lib/pytorch-cuda-engines}
ENGINES_RUN=${PYTORCH_CUDA_ENGINES_RUN:-/run/pytorch-cuda-engines}
ENGINES_LOG=${PYTORCH_CUDA_ENGINES_LOG:-/var/log/pytorch-cuda-engines}
ENGINES_CACHE=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/pytorch-cuda/engines
# Bump when the way a root is made changes (not its pins): old cached roots are then not reused.
ROOTFS_RECIPE=2

PROG=${PROG:-$(basename "$0")}
say() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: $*" >&2; exit 2; }

# manifest_flatten FILE: one `path/to/key=value` line per scalar (quotes stripped, comments dropped).
manifest_flatten() {
  awk '
    /^[[:space:]]*(#|$)/ { next }
    {
      line = $0
      sub(/[[:space:]]+#.*$/, "", line)
      match(line, /^ */); depth = RLENGTH / 2
      line = substr(line, RLENGTH + 1)
      colon = index(line, ":")
      if (colon == 0) { printf "engine-lib: cannot read line %d: %s\n", NR, $0 > "/dev/stderr"; exit 1 }
      key = substr(line, 1, colon - 1); val = substr(line, colon + 1)
      gsub(/^[[:space:]]+|[[:space:]]+$/, "", val)
      gsub(/^["\x27]|["\x27]$/, "", key); gsub(/^["\x27]|["\x27]$/, "", val)
      path[depth] = key
      if (val == "") next
      p = path[0]; for (i = 1; i <= depth; i++) p = p "/" path[i]
      print p "=" val
    }' "$1"
}

# engine_config ENGINE STORE: set the variables that describe engine docker-ENGINE-STORE.
# shellcheck disable=SC2034  # the variables are for the scripts that source this file
engine_config() {
  ENGINE=$1 STORE=$2
  [ -r "$ENGINES_MANIFEST" ] || die "cannot read $ENGINES_MANIFEST"
  local flat
  flat=$(manifest_flatten "$ENGINES_MANIFEST") || die "cannot parse $ENGINES_MANIFEST"
  local prefix="engines/$ENGINE/"
  if ! grep -q "^$prefix" <<<"$flat"; then
    die "no engine '$ENGINE' in $ENGINES_MANIFEST (known: $(sed -n 's|^engines/\([^/]*\)/.*|\1|p' <<<"$flat" | sort -u | paste -sd, -))"
  fi
  get() { sed -n "s|^$prefix$1=||p" <<<"$flat" | head -1; }
  SUITE=$(get suite) MIRROR=$(get mirror) VARIANT=$(get variant)
  if [ -z "$SUITE" ] || [ -z "$MIRROR" ]; then
    die "$ENGINES_MANIFEST: engines.$ENGINE needs suite and mirror"
  fi
  VARIANT=${VARIANT:-minbase}
  mapfile -t PINS < <(sed -n "s|^${prefix}packages/\([^=]*\)=\(.*\)|\1=\2|p" <<<"$flat" | sort)
  [ ${#PINS[@]} -gt 0 ] || die "$ENGINES_MANIFEST: engines.$ENGINE.packages is empty"
  BRIDGE=$(get "stores/$STORE/bridge") BRIDGE_IP=$(get "stores/$STORE/bridge_ip")
  if [ -z "$BRIDGE" ] || [ -z "$BRIDGE_IP" ]; then
    die "$ENGINES_MANIFEST: engines.$ENGINE.stores.$STORE needs bridge and bridge_ip"
  fi
  [ "$BRIDGE" != docker0 ] || die "$ENGINES_MANIFEST: a second engine must not use docker0"
  SUBNET=$(subnet_of "$BRIDGE_IP")
  NAME=docker-$ENGINE-$STORE
  local key
  key=$( { echo "recipe=$ROOTFS_RECIPE suite=$SUITE mirror=$MIRROR variant=$VARIANT"; printf '%s\n' "${PINS[@]}"; } |
         sha256sum | cut -c1-16)
  ROOTFS_DIR=$ENGINES_CACHE/docker-$ENGINE-$key
  ROOTFS=$ROOTFS_DIR/rootfs
  DATA_ROOT=$ENGINES_DATA/$NAME
  RUN_DIR=$ENGINES_RUN/$NAME
  SOCK=$RUN_DIR/docker.sock
  EXEC_ROOT=$RUN_DIR/exec
  PIDFILE=$RUN_DIR/dockerd.pid
  ENV_FILE=$RUN_DIR/engine.env
  LOG=$ENGINES_LOG/$NAME.log
  RULE_TAG=pytorch-cuda-engines:$NAME
}

# subnet_of 10.228.0.1/24 -> 10.228.0.0/24 (IPv4 only).
subnet_of() {
  local ip=${1%/*} len=${1#*/} a b c d n mask
  IFS=. read -r a b c d <<<"$ip"
  n=$(( (a << 24) | (b << 16) | (c << 8) | d ))
  mask=$(( len == 0 ? 0 : (0xffffffff << (32 - len)) & 0xffffffff ))
  n=$(( n & mask ))
  echo "$(( (n >> 24) & 255 )).$(( (n >> 16) & 255 )).$(( (n >> 8) & 255 )).$(( n & 255 ))/$len"
}

# sock_answers PATH: the engine at that unix socket answers /_ping.
sock_answers() {
  [ -S "$1" ] || return 1
  if command -v curl >/dev/null 2>&1; then
    [ "$(curl -s -m 5 --unix-socket "$1" http://localhost/_ping 2>/dev/null)" = OK ]
  else
    python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
sys.exit(0 if data.split(b"\r\n\r\n", 1)[-1] == b"OK" else 1)
EOF
  fi
}

# engine_pid: the pid of this engine's dockerd, if it runs (checked against its command line).
engine_pid() {
  local pid
  [ -r "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--pidfile $PIDFILE" || return 1
  echo "$pid"
}

# pids_mentioning TEXT: pids of engine processes (dockerd, containerd, its shims, runc,
# docker-proxy) whose command line contains TEXT (this engine's name its exec root).
pids_mentioning() {
  local p comm
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    comm=$(cat 2>/dev/null "/proc/$p/comm") || continue
    case $comm in
      dockerd|containerd|containerd-shim*|runc|docker-proxy) ;;
      *) continue ;;
    esac
    tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF -- "$1" && echo "$p"
  done
  return 0
}

# children_of PID: pids whose parent is PID.
children_of() {
  local parent=$1 s line ppid
  for s in /proc/[0-9]*/stat; do
    line=$(cat 2>/dev/null "$s") || continue
    # after "pid (comm) ": state, then ppid
    read -r _ ppid _ <<<"${line##*) }"
    if [ "$ppid" = "$parent" ]; then
      s=${s#/proc/}
      echo "${s%/stat}"
    fi
  done
  return 0
}

# wait_gone SECONDS PID…: 0 once none of them runs any more.
wait_gone() {
  local deadline=$(( SECONDS + $1 )) p alive
  shift
  while :; do
    alive=0
    for p in "$@"; do [ -d "/proc/$p" ] && alive=1; done
    [ $alive = 0 ] && return 0
    [ $SECONDS -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

# kill_leftovers GRACE: what is left of this engine once its dockerd is gone (its containerd,
# shims, their containers): given GRACE seconds to exit by themselves, then killed. A container's
# first process (a shim's child) is killed first: killing the shim alone would orphan it.
kill_leftovers() {
  local grace=$1 p comm
  local -a pids=() containers=()
  mapfile -t pids < <(pids_mentioning "$EXEC_ROOT/")
  [ ${#pids[@]} -gt 0 ] || return 0
  wait_gone "$grace" "${pids[@]}" && return 0
  for p in "${pids[@]}"; do
    comm=$(cat 2>/dev/null "/proc/$p/comm") || continue
    case $comm in
      containerd-shim*) mapfile -t -O "${#containers[@]}" containers < <(children_of "$p") ;;
    esac
  done
  say "stopping what is left of $NAME: pids ${pids[*]}${containers[*]:+ and container processes ${containers[*]}}"
  [ ${#containers[@]} -eq 0 ] || kill -KILL "${containers[@]}" 2>/dev/null || true
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait_gone 15 "${pids[@]}" || kill -KILL "${pids[@]}" 2>/dev/null || true
  wait_gone 5 "${pids[@]}" || true
}

# The iptables that the host's default engine uses too (same backend); the root's as a fallback.
host_iptables() {
  if command -v iptables >/dev/null 2>&1; then
    echo iptables
  elif [ -x "$ROOTFS/usr/sbin/iptables" ]; then
    echo "chroot $ROOTFS iptables"
  else
    return 1
  fi
}

# nat_rules add|del: masquerade the bridge's subnet and let its traffic through FORWARD (the
# engine runs with --iptables=false). Every rule carries the comment $RULE_TAG.
nat_rules() {
  local ipt rule
  ipt=$(host_iptables) || die "no iptables on this host (apt-get install iptables)"
  local -a rules=(
    "-t nat POSTROUTING -s $SUBNET ! -o $BRIDGE -j MASQUERADE"
    "-t filter FORWARD -i $BRIDGE -j ACCEPT"
    "-t filter FORWARD -o $BRIDGE -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
  )
  for rule in "${rules[@]}"; do
    # shellcheck disable=SC2086
    set -- $rule
    local table=$2 chain=$3
    shift 3
    case $NAT_ACTION in
      add)
        if ! $ipt -w -t "$table" -C "$chain" "$@" -m comment --comment "$RULE_TAG" 2>/dev/null; then
          if [ "$chain" = FORWARD ]; then
            $ipt -w -t "$table" -I "$chain" 1 "$@" -m comment --comment "$RULE_TAG"
          else
            $ipt -w -t "$table" -A "$chain" "$@" -m comment --comment "$RULE_TAG"
          fi
        fi ;;
      del)
        while $ipt -w -t "$table" -C "$chain" "$@" -m comment --comment "$RULE_TAG" 2>/dev/null; do
          $ipt -w -t "$table" -D "$chain" "$@" -m comment --comment "$RULE_TAG"
        done ;;
    esac
  done
}
nat_add() { NAT_ACTION=add nat_rules; }
nat_del() { NAT_ACTION=del nat_rules; }

bridge_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  if ! ip -4 addr show dev "$BRIDGE" | grep -qw "inet $BRIDGE_IP"; then
    ip addr add "$BRIDGE_IP" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
}
bridge_down() {
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link set "$BRIDGE" down 2>/dev/null || true
    ip link del "$BRIDGE"
  fi
}

# resolv_conf: the name servers the engine's containers get. The host's /etc/resolv.conf, or
# systemd-resolved's upstream file when the host's only points at a loopback stub.
resolv_conf() {
  local f=/etc/resolv.conf
  if ! grep -E '^[[:space:]]*nameserver' "$f" 2>/dev/null | grep -qvE 'nameserver[[:space:]]+(127\.|::1)' &&
     [ -r /run/systemd/resolve/resolv.conf ]; then
    f=/run/systemd/resolve/resolv.conf
  fi
  cat "$f"
}

# run-dockerd ENV_FILE: executed (by start-engine, under `unshare --mount --propagation private`):
# make the private mounts, make the cached root the namespace's root and exec its dockerd.
# Everything mounted here disappears with the engine's last process.
run_dockerd() {
  # shellcheck disable=SC1090
  . "$1"
  set -e
  mount --make-rprivate /
  # Host directories that containers may bind-mount (`-v /work/x:/x`) appear at the same paths
  # in the engine's root: every top-level directory that is not the OS's, plus /etc/ssl (the
  # host's CA store, for registries behind the host's TLS proxy). /etc, /usr, /var are the root's.
  local d name
  local -a host_dirs=()
  for d in /*/; do
    d=${d%/}
    name=${d#/}
    case $name in
      bin|boot|dev|etc|lib|lib32|lib64|libx32|lost+found|proc|run|sbin|sys|tmp|usr|var) continue ;;
    esac
    [ -d "$d" ] && [ ! -L "$d" ] && host_dirs+=("$d")
  done
  for d in "${host_dirs[@]}" /etc/ssl "$DATA_ROOT"; do
    [ -d "$ROOTFS$d" ] || mkdir -p "$ROOTFS$d"
  done
  mount --bind "$ROOTFS" "$ROOTFS"
  mount -o remount,bind,ro "$ROOTFS"
  for d in "${host_dirs[@]}"; do
    mount --bind "$d" "$ROOTFS$d"
  done
  [ -d /etc/ssl ] && mount --bind /etc/ssl "$ROOTFS/etc/ssl"
  [ -d /var/tmp ] && mount --bind /var/tmp "$ROOTFS/var/tmp"
  mount --rbind /proc "$ROOTFS/proc"
  mount --rbind /sys "$ROOTFS/sys"
  mount --rbind /dev "$ROOTFS/dev"
  # A private /run: the host's /run/containerd/containerd.sock would make dockerd use the host's
  # containerd instead of starting its own.
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$ROOTFS/run"
  mkdir -p "$ROOTFS$RUN_DIR" "$ROOTFS/run/lock"
  mount --bind "$RUN_DIR" "$ROOTFS$RUN_DIR"
  # xtables.lock is shared so that any iptables call serializes with the host's.
  touch /run/xtables.lock "$ROOTFS/run/xtables.lock"
  mount --bind /run/xtables.lock "$ROOTFS/run/xtables.lock"
  mount --bind "$DATA_ROOT" "$ROOTFS$DATA_ROOT"
  mount --rbind /tmp "$ROOTFS/tmp"
  mount --bind "$RUN_DIR/resolv.conf" "$ROOTFS/etc/resolv.conf"
  # The root becomes the namespace's root (pivot_root, not chroot: the kernel refuses new user
  # namespaces to a chrooted process, and runc or rootlesskit may need one).
  cd "$ROOTFS"
  pivot_root . .
  umount -l .
  cd /
  exec /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root TMPDIR=/tmp /usr/sbin/dockerd "${DOCKERD_ARGS[@]}"
}

# docker_cli ENGINE [--containerd-store] ARGS…: the engine's own docker CLI (with its buildx
# plugin), run inside the engine's mount namespace and root, in the current directory (which must
# be under a host directory the engine sees: /tmp, /root, /home, /work, …).
docker_cli() {
  local engine=${1:-} store=overlay2 pid cwd
  [ -n "$engine" ] || die "usage: engine-lib.sh docker N [--containerd-store] ARGS…"
  shift
  if [ "${1:-}" = --containerd-store ]; then store=containerd; shift; fi
  engine_config "$engine" "$store"
  pid=$(engine_pid) || die "$NAME is not running (scripts/start-engine --engine $engine$([ "$store" = containerd ] && echo ' --containerd-store'))"
  cwd=$(pwd)
  # shellcheck disable=SC2016  # the inner sh expands $1 and $@
  exec nsenter --target "$pid" --mount -- /usr/bin/env DOCKER_HOST="unix://$SOCK" \
    DOCKER_CONFIG="${DOCKER_CONFIG:-$RUN_DIR/cli}" /bin/sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec docker "$@"' sh "$cwd" "$@"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case ${1:-} in
    run-dockerd) shift; run_dockerd "$@" ;;
    docker) shift; docker_cli "$@" ;;
    *) echo "usage: $0 docker N [--containerd-store] ARGS… | run-dockerd ENV_FILE (internal)" >&2; exit 2 ;;
  esac
fi
