#!/usr/bin/env bash
# Builds the Debian package, target/debian/porchlight_<version>_<arch>.deb,
# with cargo-deb: the release binary, and made by it at packaging time the
# packaged configuration (the embedded defaults with the store and admin
# token under /var/lib/porchlight), the manual page and shell completions.
# Usage: scripts/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo build --release -j2 -p porchlight
bin=target/release/porchlight
assets=target/release/deb-assets
rm -rf "$assets" && mkdir -p "$assets"

"$bin" config defaults | sed \
  -e 's|^path = "porchlight-data" |path = "/var/lib/porchlight/store"|' \
  -e 's|^token_file = "porchlight-admin.token"|token_file = "/var/lib/porchlight/admin.token"|' \
  > "$assets/porchlight.toml"
for moved in '^path = "/var/lib/porchlight/store"' '^token_file = "/var/lib/porchlight/admin.token"'; do
  grep -q "$moved" "$assets/porchlight.toml" || { echo "package.sh: the defaults no longer have a line for $moved" >&2; exit 1; }
done
"$bin" config check "$assets/porchlight.toml"

"$bin" manual | gzip -9n > "$assets/porchlight.1.gz"
"$bin" completions bash > "$assets/porchlight.bash"
"$bin" completions zsh > "$assets/_porchlight"
"$bin" completions fish > "$assets/porchlight.fish"

cargo deb -p porchlight --no-build
