#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: target/debian/ballast_<version>-1_<arch>.deb, with
# /usr/bin/ballast, the systemd units (ballast.service, and ballast.socket for socket
# activation; neither enabled on install), /etc/ballast/ballast.yaml (a conffile), the
# schema in /usr/share/ballast, the man page, bash/zsh/fish completions, the monitoring kit and
# the example configurations. The binary is stripped; its debug symbols go to
# ballast-dbgsym_<version>-1_<arch>.ddeb beside it (install both to debug a core dump).
#
#   examples/package_deb.sh                 # release build (cargo install cargo-deb first)
#   PROFILE=dev examples/package_deb.sh     # a quick package from the debug build
#   PROFILE=dev BUILT=1 examples/…          # the same, not building (the build is current)
#   sudo dpkg -i target/debian/ballast_*.deb && sudo systemctl enable --now ballast
#
# Extra arguments go to `cargo deb` (e.g. --output DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 2; }
[ -n "${BUILT:-}" ] || cargo build --profile "$profile" --bin ballast
bin=${CARGO_TARGET_DIR:-target}/$dir/ballast
# Generated assets: the man page and the completions, from this build.
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets"
"$bin" man | gzip -9n > "$assets/ballast.1.gz"
"$bin" completions bash > "$assets/ballast.bash"
"$bin" completions zsh > "$assets/_ballast"
"$bin" completions fish > "$assets/ballast.fish"
sed 's|\$schema=ballast.schema.json|$schema=/usr/share/ballast/ballast.schema.json|' \
  conf/ballast.yaml > "$assets/ballast.yaml"
cargo deb --no-build --profile "$profile" --dbgsym "$@"
