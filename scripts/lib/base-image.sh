# push_base_image REGISTRY [DOCKER_HOST] [CACHE_DIR]: makes an arm64 busybox
# base image from Debian's busybox:arm64 and libc6:arm64 .debs (no public
# registry needed) and pushes it as REGISTRY/library/busybox:latest. Prints the pushed
# reference with its digest (REGISTRY/library/busybox@sha256:…).
#
# The image is one layer, written as a `docker load` archive with our own
# config ("architecture": "arm64"). `docker import --platform linux/arm64`
# is not used: Debian's dockerd 20.10 records the host's architecture (amd64)
# in the config, whatever --platform says, and every image built FROM it
# inherits that (see docs/builder.md). The layer is reproducible (sorted,
# fixed mtime and owner), so the digest only changes with the .deb.
# Not busybox-static: its shell runs applets through /proc/self/exe, and
# under qemu-user without binfmt's P flag that exec loses argv[0], so
# `RUN sleep 1` ran as `sh 1` on an amd64 builder. The dynamic busybox execs
# /bin/<applet> like any shell. The .debs are cached in CACHE_DIR (default /var/tmp/resin-base-image).
# Used by the builder's tests and by the quick-start in docs/builder.md.
push_base_image() {
  local registry=$1 host=${2:-${DOCKER_HOST:-unix:///var/run/docker.sock}} deb
  local cache=${3:-/var/tmp/resin-base-image} work ref diff cfg a pkg debs=()
  mkdir -p "$cache/debs"
  for pkg in busybox libc6; do
    deb=$(ls "$cache"/debs/"${pkg}"_*_arm64.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
      if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        echo "push_base_image: the arm64 architecture is not enabled (dpkg --add-architecture arm64; apt-get update)" >&2
        return 1
      fi
      (cd "$cache/debs" && apt-get download -q "$pkg:arm64" >/dev/null 2>&1) \
        || { echo "push_base_image: apt-get download $pkg:arm64 failed" >&2; return 1; }
      deb=$(ls "$cache"/debs/"${pkg}"_*_arm64.deb | head -1)
    fi
    debs+=("$deb")
  done
  work=$(mktemp -d)
  for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$work/root"; done
  rm -rf "$work/root/usr/share" "$work/root/usr/lib/aarch64-linux-gnu/gconv"
  mkdir -p "$work/root/tmp" "$work/root/etc" "$work/root/proc" "$work/root/sys" "$work/root/dev" "$work/root/root"
  # `busybox --install` would run arm64 code; make the applet links by name.
  for a in sh ash echo cat ls mkdir rm cp mv ln sleep date env true false test grep sed awk head tail wc tr \
    seq uname touch chmod id printf sort cut tee find xargs expr basename dirname hostname nc wget; do
    ln -sf busybox "$work/root/bin/$a"
  done
  echo "root:x:0:0:root:/root:/bin/sh" >"$work/root/etc/passwd"
  echo "root:x:0:" >"$work/root/etc/group"
  mkdir -p "$work/img"
  tar -C "$work/root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$work/img/layer.tar" .
  diff=$(sha256sum "$work/img/layer.tar" | cut -d' ' -f1)
  printf '{"architecture":"arm64","os":"linux","config":{"Env":["PATH=/bin:/sbin:/usr/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"resin base image: %s"}]}' \
    "$diff" "$(basename "${debs[0]}") $(basename "${debs[1]}")" >"$work/img/config.json"
  cfg=$(sha256sum "$work/img/config.json" | cut -d' ' -f1)
  mv "$work/img/config.json" "$work/img/$cfg.json"
  ref=$registry/library/busybox:latest
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$cfg" "$ref" >"$work/img/manifest.json"
  tar -C "$work/img" -cf "$work/image.tar" .
  DOCKER_HOST=$host docker load -q -i "$work/image.tar" >/dev/null || { rm -rf "$work"; return 1; }
  rm -rf "$work"
  DOCKER_HOST=$host docker push -q "$ref" >/dev/null || return 1
  DOCKER_HOST=$host docker inspect --format '{{index .RepoDigests 0}}' "$ref"
}
