#!/usr/bin/env python3
"""Generates meta-resin's crates .inc (crate:// SRC_URI entries with sha256sums) from Cargo.lock.

Regenerate the committed file (what scripts/checks/70-meta-resin.sh checks) with:

    meta-resin/scripts/gen-crates-inc.sh

The list holds EVERY crates.io package of the workspace's Cargo.lock, not only
the ones resin-supervisor links for aarch64. Cargo resolves the whole
workspace lock file (all members, all platforms) before it builds one member,
and bitbake's cargo class points cargo at a vendored directory holding only
the crates in SRC_URI. With only the supervisor's aarch64 crates vendored,
`cargo tree --offline --locked -p resin-supervisor --target
aarch64-unknown-linux-gnu` fails with "no matching package named `sqlx`"
(a resin-cloud dependency); with every aarch64 crate of the workspace it fails
on `windows-sys` (tokio, for Windows). oe-core's own `bitbake -c
update_crates` (cargo-update-recipe-crates) lists the whole lock file too.

The output is deterministic (lock-file order, no timestamps); with --output it
is written to a temporary file, fsynced and renamed into place.
"""

import argparse
import os
import sys
import tempfile
import tomllib

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def render(lock_path):
    try:
        with open(lock_path, "rb") as f:
            lock = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"gen-crates-inc: cannot read {lock_path}: {e}")
    crates = [p for p in lock.get("package", []) if p.get("source") == CRATES_IO]
    missing = [f"{p['name']} {p['version']}" for p in crates if not p.get("checksum")]
    if missing:
        sys.exit(f"gen-crates-inc: no checksum in {lock_path} for {missing}")
    out = [
        "# Every crates.io package of the resin workspace's Cargo.lock, generated; do not edit.",
        "# Regenerate: meta-resin/scripts/gen-crates-inc.sh",
        "",
    ]
    out += [f'SRC_URI += "crate://crates.io/{p["name"]}/{p["version"]}"' for p in crates]
    out += [""]
    out += [f'SRC_URI[{p["name"]}-{p["version"]}.sha256sum] = "{p["checksum"]}"' for p in crates]
    return "\n".join(out) + "\n"


def write_atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".crates-inc.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", default=os.path.normpath(os.path.join(here, "..", "..", "Cargo.lock")),
                    help="Cargo.lock to read (default: the workspace's, beside meta-resin)")
    ap.add_argument("--output", help="file to write (default: stdout)")
    args = ap.parse_args()
    text = render(args.lock)
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
