# Shared settings and helpers for scripts/cluster and scripts/deps (sourced, not run).
# shellcheck shell=bash disable=SC2034  # settings are used by the scripts sourcing this

LAB_DIR=${PGFRONT_LAB_DIR:-/var/tmp/pgfront-lab}
LAB_DIR=${LAB_DIR%/}
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
VENV=$LAB_DIR/venv
SYS_PY=/usr/bin/python3          # never pyenv's python: postgres must be able to run the venv
# A second, independent lab runs beside the default one with other addresses and its own
# state dir, e.g. PGFRONT_LAB_NET=127.0.0.2 PGFRONT_LAB_ETCD=127.0.0.1:2479
# PGFRONT_LAB_DIR=/var/tmp/pgfront-lab2: nodes 127.0.0.21-23, etcd peer port 2480.
LAB_NET=${PGFRONT_LAB_NET:-127.0.0.1}     # node N listens on ${LAB_NET}N
LAB_ETCD=${PGFRONT_LAB_ETCD:-127.0.0.1:2379}  # etcd client address; peer port = client port + 1
NODES=(node1 node2 node3)
declare -A NODE_IP=([node1]=${LAB_NET}1 [node2]=${LAB_NET}2 [node3]=${LAB_NET}3)
ETCD_URL=http://$LAB_ETCD
ETCD_PEER_URL=http://${LAB_ETCD%:*}:$((${LAB_ETCD##*:} + 1))
SCOPE=lab
NAMESPACE=/pgfront/
PATRONICTL_YML=$LAB_DIR/patronictl.yml

say() { printf '%s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }
need_root() { [[ $EUID -eq 0 ]] || die "must run as root (it chowns files and drops to postgres)"; }
now_ms() { date +%s%3N; }

[[ $LAB_NET =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[1-9][0-9]?$ && ${LAB_NET##*.}3 -le 255 ]] ||
  die "PGFRONT_LAB_NET=$LAB_NET: expected a loopback prefix such as 127.0.0.2 (nodes are \${NET}1..3)"
[[ $LAB_ETCD =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}:[0-9]{1,5}$ ]] ||
  die "PGFRONT_LAB_ETCD=$LAB_ETCD: expected a loopback IP:PORT such as 127.0.0.1:2479"
# PGFRONT_LAB_NODE_COUNT=4 adds node4 (${LAB_NET}4) to the nodes a command knows (discovery's
# end-to-end test starts it into a running 3-node lab with `start node4`); unset or 3: the usual three.
case ${PGFRONT_LAB_NODE_COUNT:-3} in
  3) ;;
  4) NODES+=(node4) NODE_IP[node4]=${LAB_NET}4 ;;
  *) die "PGFRONT_LAB_NODE_COUNT=$PGFRONT_LAB_NODE_COUNT: expected 3 or 4" ;;
esac

# Runs a command as the postgres OS user, with groups, without a root parent left behind.
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

# A state dir belongs to one address set: its certificates carry the node IPs, and its
# running nodes' configs must never be rewritten for another network. lab.id records the
# set (a dir without it predates the overrides, so it holds the defaults).
LAB_ID="net=$LAB_NET etcd=$LAB_ETCD"
check_lab_id() {
  local have="net=127.0.0.1 etcd=127.0.0.1:2379"
  [[ -s $LAB_DIR/lab.id ]] && have=$(<"$LAB_DIR/lab.id")
  [[ ! -d $LAB_DIR/certs || $have == "$LAB_ID" ]] ||
    die "$LAB_DIR holds the lab with $have, not $LAB_ID (set PGFRONT_LAB_DIR to another dir)"
}

# --- HTTP: curl when present, else the venv's python (deps installs curl anyway) -------------
if command -v curl >/dev/null 2>&1; then
  # Prints the status code, 000 when nothing answered.
  http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time "${2:-2}" "$1" || true; }
  # Prints the body whatever the status (Patroni sends JSON with 503 too).
  http_get() { curl -s --max-time "${2:-2}" "$1" || true; }
  http_patch() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X PATCH \
                   -H 'Content-Type: application/json' -d "$2" "$1" || true; }
else
  _py_http() {
    "$VENV/bin/python" - "$@" <<'PY'
import sys, urllib.request, urllib.error
mode, url = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, method="PATCH" if mode == "patch" else "GET",
                             data=sys.argv[3].encode() if mode == "patch" else None,
                             headers={"Content-Type": "application/json"})
try:
    r = urllib.request.urlopen(req, timeout=2); code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
except Exception:
    code, body = 0, b""
sys.stdout.write("%03d" % code if mode != "get" else body.decode(errors="replace"))
PY
  }
  http_code() { _py_http code "$1"; }
  http_get() { _py_http get "$1"; }
  http_patch() { _py_http patch "$1" "$2"; }
fi

# Prints fields of a JSON document read from stdin: json_fields KEY.PATH... (missing -> "-").
json_fields() {
  "$SYS_PY" -c '
import json, sys
try: d = json.load(sys.stdin)
except Exception: d = {}
out = []
for path in sys.argv[1:]:
    v = d
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    out.append("-" if v is None else str(v))
print(" ".join(out))' "$@"
}

# --- processes: every PID we signal is checked against its command line first ---------------
# pid_if_matches PIDFILE PATTERN: prints the PID if it is alive and its argv contains PATTERN.
pid_if_matches() {
  local pid
  [[ -s $1 ]] || return 0
  pid=$(head -n1 "$1" | tr -dc '0-9')
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 0
  if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"; then echo "$pid"; fi
}
etcd_pid() { pid_if_matches "$LAB_DIR/etcd.pid" "$LAB_DIR/etcd-data"; }
patroni_pid() { pid_if_matches "$LAB_DIR/$1/patroni.pid" "$LAB_DIR/$1/patroni.yml"; }
postmaster_pid() { pid_if_matches "$LAB_DIR/$1/data/postmaster.pid" "$LAB_DIR/$1/data"; }

# pid_alive PID: exists and is not a zombie (PID 1 here may never reap orphans).
pid_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

# wait_gone SECONDS PID...: true once none of the PIDs is alive.
wait_gone() {
  local deadline=$((SECONDS + $1)) p alive; shift
  while :; do
    alive=0
    for p in "$@"; do pid_alive "$p" && alive=1; done
    ((alive)) || return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
