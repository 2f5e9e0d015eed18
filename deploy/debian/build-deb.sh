#!/usr/bin/env bash
# Builds the Debian package of linetokd for the systemd deployment.
#
#   deploy/debian/build-deb.sh                      # cargo build --release, then the package
#   deploy/debian/build-deb.sh --binary PATH --out DIR [--compression xz|gzip|none]
#
# Writes DIR/linetokd_VERSION_ARCH.deb (default DIR: target/debian) and
# prints its path. Needs dpkg-deb and gzip (both on every Debian and Ubuntu
# system); no root: --root-owner-group makes every file root's. The
# Maintainer field comes from DEBFULLNAME and DEBEMAIL.
#
# The package holds:
#   /usr/bin/linetokd                             the binary
#   /usr/lib/systemd/system/linetokd.service      deploy/systemd's unit, ExecStart=/usr/bin/linetokd
#   /usr/lib/sysusers.d/linetokd.conf             the system user `linetokd`
#   /usr/lib/tmpfiles.d/linetokd.conf             its state directory /var/lib/linetokd
#   /etc/linetokd/linetokd.toml                   deploy/systemd's config (a conffile)
#   /usr/share/man/man1/linetokd.1.gz             `linetokd man`
#   bash, zsh and fish completions                `linetokd completions SHELL`
#   /usr/share/doc/linetokd/                      copyright, README, the fully commented example config
# The maintainer scripts create the user and the state directory; they do
# not enable or start the service: the config needs the channel's ID and
# kid and the credentials first (deploy/README.md, "systemd").
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
binary=""
out="$repo/target/debian"
# xz makes the smallest package; the test packs a 200 MB debug binary and
# asks for none.
compression=xz

usage() {
  echo "usage: $0 [--binary PATH] [--out DIR] [--compression xz|gzip|none]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || usage; binary="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || usage; out="$2"; shift 2 ;;
    --compression) [ $# -ge 2 ] || usage; compression="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) usage ;;
  esac
done

case "$compression" in
  xz|gzip|none) ;;
  *) usage ;;
esac
for tool in dpkg-deb gzip; do
  if ! command -v "$tool" >/dev/null; then
    echo "build-deb: $tool is missing (on Debian: apt-get install dpkg gzip)" >&2
    exit 1
  fi
done

if [ -z "$binary" ]; then
  (cd "$repo" && cargo build --release --locked)
  binary="$repo/target/release/linetokd"
fi
if [ ! -x "$binary" ]; then
  echo "build-deb: $binary is not an executable" >&2
  exit 1
fi

# "linetokd 0.1.0 (commit abc1234)": the version is the binary's own, so
# the package can never claim another.
version="$("$binary" --version | awk '{print $2}')"
case "$version" in
  [0-9]*) ;;
  *) echo "build-deb: cannot read a version from $binary --version" >&2; exit 1 ;;
esac
if command -v dpkg >/dev/null; then
  arch="$(dpkg --print-architecture)"
else
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) echo "build-deb: unknown architecture $(uname -m); install dpkg" >&2; exit 1 ;;
  esac
fi

# Who builds it: Debian's usual variables, as dch and dh_make read them.
maintainer="${DEBFULLNAME:-linetokd maintainers} <${DEBEMAIL:-linetokd@localhost}>"

mkdir -p "$out"
root="$(mktemp -d "$out/.linetokd-deb.XXXXXX")"
trap 'rm -rf "$root"' EXIT
# mktemp makes it 0700; it becomes the package's "/".
chmod 0755 "$root"
umask 022

install -D -m 0755 "$binary" "$root/usr/bin/linetokd"

# The unit as shipped, with the packaged binary's path.
install -d "$root/usr/lib/systemd/system"
sed 's#/usr/local/bin/linetokd#/usr/bin/linetokd#g' "$repo/deploy/systemd/linetokd.service" \
  > "$root/usr/lib/systemd/system/linetokd.service"
if ! grep -q '^ExecStart=/usr/bin/linetokd run ' "$root/usr/lib/systemd/system/linetokd.service"; then
  echo "build-deb: deploy/systemd/linetokd.service has no ExecStart=/usr/local/bin/linetokd run to rewrite" >&2
  exit 1
fi
chmod 0644 "$root/usr/lib/systemd/system/linetokd.service"

install -D -m 0644 "$repo/deploy/systemd/linetokd.sysusers" "$root/usr/lib/sysusers.d/linetokd.conf"
install -D -m 0644 "$repo/deploy/debian/linetokd.tmpfiles" "$root/usr/lib/tmpfiles.d/linetokd.conf"
install -D -m 0644 "$repo/deploy/systemd/linetokd.toml" "$root/etc/linetokd/linetokd.toml"

install -d "$root/usr/share/man/man1"
"$binary" man | gzip -9n > "$root/usr/share/man/man1/linetokd.1.gz"
install -d "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
"$binary" completions bash > "$root/usr/share/bash-completion/completions/linetokd"
"$binary" completions zsh > "$root/usr/share/zsh/vendor-completions/_linetokd"
"$binary" completions fish > "$root/usr/share/fish/vendor_completions.d/linetokd.fish"

doc="$root/usr/share/doc/linetokd"
install -D -m 0644 "$repo/deploy/debian/copyright" "$doc/copyright"
install -m 0644 "$repo/README.md" "$doc/README.md"
install -D -m 0644 "$repo/config/linetokd.toml" "$doc/examples/linetokd.toml"

install -d "$root/DEBIAN"
installed_size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<CONTROL
Package: linetokd
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: libc6, systemd (>= 248)
Section: admin
Priority: optional
Description: keeps LINE Messaging API channel access tokens alive
 linetokd is a daemon that issues LINE channel access tokens v2.1 with
 signed JWT assertions, rotates each one ahead of its expiry, keeps at most
 two live tokens per consumer group, revokes or reports stale ones, and
 hands the current token to its consumers (files, hooks, an HTTP API).
 .
 This package runs it as a hardened systemd service (linetokd.service)
 under its own system user.
CONTROL
echo /etc/linetokd/linetokd.toml > "$root/DEBIAN/conffiles"
install -m 0755 "$repo/deploy/debian/postinst" "$root/DEBIAN/postinst"
install -m 0755 "$repo/deploy/debian/prerm" "$root/DEBIAN/prerm"
install -m 0755 "$repo/deploy/debian/postrm" "$root/DEBIAN/postrm"

deb="$out/linetokd_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group -Z"$compression" "$root" "$deb" >/dev/null
echo "$deb"
