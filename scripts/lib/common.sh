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
  postgresql nginx-light wrk
  # supervisor tests
  docker.io docker-registry dbus busybox-static
  # OS updates
  rauc rauc-service openssl squashfs-tools
  # imagegen
  e2fsprogs dosfstools mtools gdisk fdisk bmap-tools genimage zstd xz-utils u-boot-tools grub-common
  # arm64 device, QEMU
  qemu-user-static binfmt-support qemu-system-arm qemu-efi-aarch64 mmdebstrap arch-test
  # QEMU tests: host-side initrd/kernel handling, the aarch64 cross toolchain (Debian's Rust 1.96;
  # the :arm64 packages are installed by qemu-tests/scripts/assets.sh after adding the arch)
  kmod cpio openssl gcc-aarch64-linux-gnu rustc-web cargo-web
)

# install_packages [extra…]: apt-get only what is missing (fast when all are there).
install_packages() {
  local missing=() p
  for p in "${RESIN_APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_rust: cargo on PATH (the machine's rustup toolchain, or Debian's).
ensure_rust() {
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup or Debian's cargo)"
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
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
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
