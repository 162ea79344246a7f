# Shared helpers for resin's scripts. Source it; it defines functions only.
# Everything here is idempotent: a second call finds the work done and returns.

RESIN_ROOT=${RESIN_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
RESIN_RUN=${RESIN_RUN:-/tmp/resin-run}
export RESIN_ROOT RESIN_RUN

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages every part of the project needs, in one list.
RESIN_APT_PACKAGES=(
  # build
  build-essential pkg-config git ca-certificates curl python3-venv python3-pip
  # cloud tests, benchmarks
  postgresql nginx-light wrk stress-ng jq
  # dashboard browser tests (WebDriver, headless)
  chromium chromium-driver
  # supervisor tests
  docker.io docker-registry dbus busybox-static
  # OS updates
  rauc rauc-service openssl squashfs-tools
  # imagegen
  e2fsprogs dosfstools mtools gdisk fdisk bmap-tools genimage zstd xz-utils u-boot-tools grub-common qemu-utils libubootenv-tool cryptsetup-bin
  # arm64 device, QEMU
  qemu-user-static binfmt-support qemu-system-arm qemu-efi-aarch64 ipxe-qemu mmdebstrap arch-test
  # QEMU tests: host-side initrd/kernel handling, the aarch64 cross toolchain (Debian's Rust 1.96)
  kmod cpio openssl gcc-aarch64-linux-gnu rustc-web cargo-web
  # arm64 packages (install_packages adds the arm64 architecture first): the GRUB EFI modules for
  # grub-mkimage, and the arm64 std and libc the cross build links against
  grub-efi-arm64-bin:arm64 libstd-rust-web-dev:arm64 libc6-dev:arm64
  chrpath diffstat gawk texinfo file wget lz4 locales  # bitbake's host tools and en_US.UTF-8 (checks/75-bitbake.sh)
)

# install_packages [extra…]: apt-get only what is missing (fast when all are there).
# A second pass installs what the first one removed: apt may remove an installed
# package that conflicts with a new one (seen: a machine with a backported
# qemu-utils 10, which Debian 12's qemu-system-arm replaces with nothing).
install_packages() {
  local missing=() p pass updated=0
  for pass in 1 2 3; do
    missing=()
    for p in "${RESIN_APT_PACKAGES[@]}" "$@"; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$pass" = 3 ] && die "apt removed Debian packages as fast as it installed them: ${missing[*]}"
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if printf '%s\n' "${missing[@]}" | grep -q ':arm64$' && ! dpkg --print-foreign-architectures | grep -qx arm64; then
      dpkg --add-architecture arm64
    fi
    if [ "$updated" = 0 ]; then
      apt-get -o DPkg::Lock::Timeout=600 update -qq
      updated=1
    fi
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  done
}

# The Debian mirror this machine already uses (first URIs: line of its sources).
debian_mirror() {
  local m
  m=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}' || true)
  [ -n "$m" ] || m=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# need CMD…: each command is on PATH (or an absolute path that is executable);
# otherwise fails naming it. Every start_* function below calls it for what it
# will exec, so `preflight_services` checks exactly what the services need.
need() {
  local c
  for c in "$@"; do
    if [ "${c#/}" != "$c" ]; then [ -x "$c" ] && continue; else command -v "$c" >/dev/null && continue; fi
    die "preflight: $c is missing (it comes from a Debian package in RESIN_APT_PACKAGES, scripts/lib/common.sh)"
  done
}

# preflight_services: runs each start_* function in check-only mode (its
# `need` line, then return), so a missing binary is named before anything starts.
preflight_services() {
  local f
  for f in start_postgres start_dockerd start_registry start_rauc_check; do
    RESIN_PREFLIGHT=1 "$f" || return 1
  done
  log "preflight: services ok (PostgreSQL, dockerd, registry, rauc)"
}

# start_rauc_check: RAUC and a D-Bus daemon, which the osupdate tests start on
# a private bus (osupdate/tests/common); only checked here.
start_rauc_check() {
  need rauc dbus-daemon openssl
  rauc --version >/dev/null || die "preflight: rauc does not run"
}

# ---- Stage times -------------------------------------------------------------
# stage NAME: ends the current stage (if any) and starts NAME. Every stage's
# time goes to $RESIN_STAGES (a file shared by the scripts a run calls, so
# checks' own stages nest under the check), and `stage_table` prints them.
# A script that exits while a stage is open records it as FAILED (EXIT trap).
RESIN_STAGE_DEPTH=${RESIN_STAGE_DEPTH:-0}
_STAGE_ID=""
_STAGE_T=0
stage() {
  stage_end
  _STAGE_T=$(date +%s)
  _STAGE_ID="$$-$_STAGE_T-$RANDOM"
  [ -n "${RESIN_STAGES:-}" ] && printf 'B\t%s\t%s\t%s\n' "$_STAGE_ID" "$RESIN_STAGE_DEPTH" "$1" >>"$RESIN_STAGES"
  log "$1"
  trap '_stage_exit $?; eval "${RESIN_ON_EXIT:-}"' EXIT
}
stage_end() {
  local status=${1:-ok}
  [ -n "$_STAGE_ID" ] || return 0
  [ -n "${RESIN_STAGES:-}" ] && printf 'E\t%s\t%s\t%s\n' "$_STAGE_ID" "$(( $(date +%s) - _STAGE_T ))" "$status" >>"$RESIN_STAGES"
  _STAGE_ID=""
}
_stage_exit() { if [ "$1" = 0 ]; then stage_end ok; else stage_end FAILED; fi; }
# stage_table: the stages so far, one line each, nested by depth, with a total.
stage_table() {
  [ -n "${RESIN_STAGES:-}" ] && [ -f "$RESIN_STAGES" ] || return 0
  awk -F'\t' -v now="$(date +%s)" '
    $1 == "B" { n++; id[n] = $2; depth[n] = $3; name[n] = $4; at[$2] = n }
    $1 == "E" { secs[at[$2]] = $3; st[at[$2]] = $4 }
    END {
      printf "\n%-52s %8s  %s\n", "stage", "seconds", "result"
      for (i = 1; i <= n; i++) {
        ind = ""; for (d = 0; d < depth[i]; d++) ind = ind "  "
        s = (i in secs) ? secs[i] : "-"; r = (i in st) ? st[i] : "not ended"
        if (depth[i] == 0 && s != "-") total += s
        printf "%-52s %8s  %s\n", substr(ind name[i], 1, 52), s, r
      }
      printf "%-52s %8d  (%d min)\n", "sum of the stages", total, int((total + 59) / 60)
      if (n) {
        split(id[1], a, "-"); wall = now - a[2]
        printf "%-52s %8d  (%d min; less than the sum where stages ran side by side)\n", "wall clock since the first stage", wall, int((wall + 59) / 60)
      }
    }' "$RESIN_STAGES"
}

# ---- Caches outside the clone ------------------------------------------------
# ensure_cargo_target [NAME] [RUSTC]: sets CARGO_TARGET_DIR (unless the caller
# set it) to /var/cache/resin-cargo/NAME-<toolchain>-<Cargo.lock>, so a fresh
# clone with the same toolchain and lock file starts warm. When the lock file
# changes, the newest directory of the same toolchain is renamed to the new key
# rather than starting cold: cargo's fingerprints include every dependency's
# version, features and the compiler, so it rebuilds exactly what the new lock
# changed (a stale artefact is never reused). Directories of other toolchains
# or older locks beyond the newest two are removed.
ensure_cargo_target() {
  local name=${1:-target} rustc=${2:-rustc} root=${RESIN_CARGO_CACHE:-/var/cache/resin-cargo} tc lock dir prev
  if [ -n "${CARGO_TARGET_DIR:-}" ] && [ "$name" = target ]; then return 0; fi
  tc=$($rustc -vV | sha256sum | cut -c1-12)
  lock=$(sha256sum <"$RESIN_ROOT/Cargo.lock" | cut -c1-12)
  dir=$root/$name-$tc-$lock
  mkdir -p "$root"
  if [ ! -d "$dir" ]; then
    prev=$(ls -dt "$root/$name-$tc-"* 2>/dev/null | head -1 || true)
    if [ -n "$prev" ]; then
      log "cargo cache: Cargo.lock changed; $prev becomes $dir (cargo rebuilds what changed)"
      mv "$prev" "$dir"
    fi
  fi
  mkdir -p "$dir" && touch "$dir"
  # cargo decides that a workspace crate is fresh by comparing its sources'
  # mtimes with its last build, and its fingerprints do not name the
  # checkout's path: after a build from another checkout, a file this
  # checkout changed earlier than that build would look unchanged. So when
  # the dir was last used by another checkout, this checkout's files are
  # touched (a fresh clone's already are newer): the workspace's crates are
  # rebuilt, the dependencies are not.
  if [ -f "$dir/.resin-checkout" ] && [ "$(cat "$dir/.resin-checkout")" != "$RESIN_ROOT" ]; then
    log "cargo cache: last used by $(cat "$dir/.resin-checkout"); marking $RESIN_ROOT's sources newer"
    if git -C "$RESIN_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
      (cd "$RESIN_ROOT" && git ls-files -z | xargs -0 -r touch -c)
    else
      find "$RESIN_ROOT" -path "$RESIN_ROOT/target" -prune -o -type f -exec touch -c {} +
    fi
  fi
  printf '%s\n' "$RESIN_ROOT" >"$dir/.resin-checkout"
  prune_stale_executables "$dir"
  ls -dt "$root/$name-"* 2>/dev/null | tail -n +3 | xargs -r rm -rf
  if [ "$name" = target ]; then export CARGO_TARGET_DIR=$dir; else echo "$dir"; fi
}

# prune_stale_executables DIR: cargo names each test executable by a hash of
# its dependencies, so every Cargo.lock or dev-dependency change leaves the
# old ones behind in DIR/debug/deps (hundreds of MB each; 116 of them, 12.9 GB,
# after a few sessions). One not run for 3 days goes: running a file updates
# its access time at least once a day under relatime (the default), so only
# on a filesystem mounted noatime is nothing pruned.
prune_stale_executables() {
  local deps=$1/debug/deps
  [ -d "$deps" ] || return 0
  case ",$(findmnt -no OPTIONS -T "$deps" 2>/dev/null)," in
    *,noatime,* | ,,) return 0 ;;
  esac
  local n
  n=$(find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -amin +4320 -print -delete | wc -l)
  [ "$n" = 0 ] || log "cargo cache: removed $n test executables not run for 3 days"
}

# ensure_rust: cargo on PATH (the machine's rustup toolchain, or Debian's).
ensure_rust() {
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup or Debian's cargo)"
  # No incremental-compilation data: a clone's workspace crates are rebuilt
  # whole anyway, and that data was 7.4 GiB of the 17 GiB target cache.
  export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
  ensure_cargo_target
}

# ensure_binfmt: arm64 ELF binaries run on this host through qemu-aarch64.
ensure_binfmt() {
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' \
      > /proc/sys/fs/binfmt_misc/register
  fi
}

# wait_for CMD… : retries CMD for up to 60 s.
wait_for() {
  local i
  for i in $(seq 1 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# start_dockerd: a private Docker engine (own socket, data root, exec root).
# Never touches a system daemon. Exports RESIN_TEST_DOCKER_HOST.
start_dockerd() {
  local d=$RESIN_RUN/docker
  need dockerd docker containerd runc
  [ -n "${RESIN_PREFLIGHT:-}" ] && { dockerd --version >/dev/null; return; }
  export RESIN_TEST_DOCKER_HOST=unix://$d/docker.sock
  if pid_alive "$d/docker.pid" && DOCKER_HOST=$RESIN_TEST_DOCKER_HOST docker version >/dev/null 2>&1; then return 0; fi
  mkdir -p "$d/data" "$d/exec"
  # A pid file left by an earlier boot can name a pid now reused by another
  # process; dockerd would then wait for a containerd that is not there.
  local cpid=$d/exec/containerd/containerd.pid
  if [ -f "$cpid" ] && [ "$(cat "/proc/$(cat "$cpid")/comm" 2>/dev/null)" != containerd ]; then
    rm -f "$cpid"
  fi
  log "starting a private dockerd at $d"
  # Keep containerd's state under our run dir too.
  nohup dockerd --host "$RESIN_TEST_DOCKER_HOST" --data-root "$d/data" --exec-root "$d/exec" \
    --pidfile "$d/docker.pid" \
    --insecure-registry 127.0.0.1:55000 >"$d/dockerd.log" 2>&1 &
  wait_for env DOCKER_HOST="$RESIN_TEST_DOCKER_HOST" docker version || { tail -30 "$d/dockerd.log"; die "dockerd did not start"; }
}

# start_postgres: a private PostgreSQL 15 cluster on 127.0.0.1:55432, trust auth.
# Exports RESIN_TEST_PG_URL.
start_postgres() {
  local d=$RESIN_RUN/pg bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$bin" ] || die "preflight: no /usr/lib/postgresql/*/bin (the postgresql package is missing)"
  need "$bin/initdb" "$bin/pg_ctl" "$bin/pg_isready" su
  [ -n "${RESIN_PREFLIGHT:-}" ] && { "$bin/initdb" --version >/dev/null; return; }
  export RESIN_TEST_PG_URL=postgres://postgres@127.0.0.1:55432/postgres
  if pid_alive "$d/data/postmaster.pid.copy" || "$bin/pg_isready" -q -h 127.0.0.1 -p 55432; then return 0; fi
  log "starting a private PostgreSQL at $d"
  mkdir -p "$d" && chown postgres:postgres "$d"
  if [ ! -f "$d/data/PG_VERSION" ]; then
    su postgres -s /bin/sh -c "$bin/initdb -D '$d/data' -A trust -U postgres" >"$d/initdb.log" 2>&1 || { cat "$d/initdb.log"; die "initdb failed"; }
  fi
  su postgres -s /bin/sh -c "$bin/pg_ctl -D '$d/data' -l '$d/pg.log' -w -o \"-h 127.0.0.1 -p 55432 -k '$d' -c max_connections=300 -c fsync=off\" start" >/dev/null \
    || { tail -30 "$d/pg.log"; die "PostgreSQL did not start"; }
}

# start_registry: Docker Distribution on 127.0.0.1:55000. Exports RESIN_TEST_REGISTRY.
start_registry() {
  local d=$RESIN_RUN/registry
  need docker-registry curl
  [ -n "${RESIN_PREFLIGHT:-}" ] && { docker-registry --version >/dev/null; return; }
  export RESIN_TEST_REGISTRY=127.0.0.1:55000
  if curl -fsS "http://$RESIN_TEST_REGISTRY/v2/" >/dev/null 2>&1; then return 0; fi
  mkdir -p "$d/data"
  cat >"$d/config.yml" <<CFG
version: 0.1
storage:
  filesystem:
    rootdirectory: $d/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:55000
CFG
  log "starting docker-registry on $RESIN_TEST_REGISTRY"
  nohup docker-registry serve "$d/config.yml" >"$d/registry.log" 2>&1 &
  echo $! >"$d/registry.pid"
  wait_for curl -fsS "http://$RESIN_TEST_REGISTRY/v2/" || { tail -30 "$d/registry.log"; die "registry did not start"; }
}

# cloud_instance: builds resin-cloud and prepares a private instance of it for
# a check: sets BIN, WORK (its data dir, removed on exit with the process),
# URL and the RESIN_CLOUD_* environment. `cloud_serve` then starts it.
# CLOUD_PROFILE=release builds and runs the release binary (benchmarks).
cloud_instance() {
  local profile=${CLOUD_PROFILE:-debug}
  if [ "$profile" = debug ]; then
    cargo build -q ${CI:+--locked} -p resin-cloud
  else
    cargo build -q ${CI:+--locked} --profile "$profile" -p resin-cloud
  fi
  BIN="$CARGO_TARGET_DIR/$profile/resin-cloud"
  WORK=$(mktemp -d)
  local port=$((20000 + RANDOM % 20000))
  URL="http://127.0.0.1:$port"
  export RESIN_CLOUD_DATA_DIR="$WORK" RESIN_CLOUD_LISTEN="127.0.0.1:$port" RESIN_CLOUD_PLAIN_HTTP=true
  CLOUD_PID=
  trap '[ -n "$CLOUD_PID" ] && kill "$CLOUD_PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
}

# cloud_serve: starts the instance of cloud_instance and waits for /ping.
cloud_serve() {
  "$BIN" serve >"$WORK/log" 2>&1 &
  CLOUD_PID=$!
  wait_for curl -fsS "$URL/ping" || { cat "$WORK/log" >&2; die "resin-cloud did not start"; }
}

# write_env: the exported service addresses, for `source $RESIN_RUN/env.sh`.
# Merges with what an earlier script wrote, so a check that starts only some
# services (e.g. the QEMU check) keeps the others' addresses.
write_env() {
  mkdir -p "$RESIN_RUN"
  local cur
  cur=$(env | grep -E '^RESIN_TEST_' | sed 's/^/export /' || true)
  (
    [ -f "$RESIN_RUN/env.sh" ] && . "$RESIN_RUN/env.sh"
    eval "$cur"
    env | grep -E '^RESIN_TEST_' | sed 's/^/export /' | sort || true
  ) >"$RESIN_RUN/env.sh.tmp" && mv "$RESIN_RUN/env.sh.tmp" "$RESIN_RUN/env.sh"
}
