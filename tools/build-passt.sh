#!/bin/bash
# Build the current passt that the tests run beside Debian 12's own (0.0~git20230309, which has
# no --vhost-user): Debian 13 (trixie)'s passt source package, fetched with apt, built with plain
# make, installed into a cache outside the repository:
#
#   $VIRTNET_TEST_CACHE/passt-VERSION/{passt,passt.avx2,VERSION}
#   $VIRTNET_TEST_CACHE/passt-current -> passt-VERSION      (what tests/conftest.py runs)
#
# VERSION is the Debian version trixie has now (PASST_VERSION pins another one trixie still has).
# A version already built is not built again. apt runs with a private configuration: a one-line
# sources list (deb-src for trixie only) and its own lists and cache dirs under a temporary dir,
# so the machine's sources, lists and caches are left alone. apt checks the source tarballs
# against trixie's signed Sources index (the bookworm archive keyring verifies trixie's Release).
# The .dsc is not fetched (--tar-only, --diff-only): the tarballs are all the build needs.
#
# Run as root (make test-deps does): apt's downloads and the cache dir need it, and missing build
# tools are installed with apt-get. Not as root it builds nothing, says so and exits 0: the tests
# that need this passt skip then, as not root they skip anyway. When anything fails it writes the
# reason to $VIRTNET_TEST_CACHE/passt-build.failed (the tests quote it) and exits 1, unless an
# earlier build is cached (e.g. offline): that one is kept and used, with a warning.
#
# Environment: VIRTNET_TEST_CACHE (default /var/cache/virtnet-test), PASST_SUITE (default
# trixie), PASST_VERSION (default: the suite's), PASST_MIRROR (default: the Debian mirror this
# machine's apt already uses, else deb.debian.org).
set -euo pipefail

CACHE=${VIRTNET_TEST_CACHE:-/var/cache/virtnet-test}
SUITE=${PASST_SUITE:-trixie}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
FAILED=$CACHE/passt-build.failed
CURRENT=$CACHE/passt-current

say() { echo "build-passt: $*" >&2; }

fail() {
    say "error: $*"
    if [ -x "$CURRENT/passt" ]; then  # e.g. offline: the tests run the one built before
        say "using the passt built earlier: $(readlink -f "$CURRENT")/passt"
        echo "$CURRENT/passt"
        exit 0
    fi
    { mkdir -p "$CACHE" && printf '%s\n' "$*" > "$FAILED"; } || true
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    say "not root, so not building the current passt (Debian $SUITE's); the tests that need it skip"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/passt-build.lock"
flock 9  # two `make test` at once build it once

mirror=${PASST_MIRROR:-}
if [ -z "$mirror" ]; then
    # The first Debian archive (not debian-security) the machine's own apt configuration names.
    # shellcheck disable=SC2016  # $(ORIGIN) and $(REPO_URI) are apt's placeholders, not the shell's
    mirror=$(apt-get indextargets --format '$(ORIGIN) $(REPO_URI)' 2>/dev/null |
             awk '$1 == "Debian" && $2 !~ /security/ { print $2; exit }')
    mirror=${mirror:-http://deb.debian.org/debian/}
fi

work=$(mktemp -d /tmp/build-passt.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/etc" "$work/lists/partial" "$work/cache/archives/partial" "$work/fetch" "$work/src"
chmod 0755 "$work"  # apt downloads as user _apt where that user may write
chown _apt "$work/lists/partial" "$work/cache/archives/partial" "$work/fetch" 2> /dev/null || true
echo "deb-src [signed-by=$KEYRING] $mirror $SUITE main" > "$work/etc/sources.list"
apt_private=(-o "Dir::Etc::sourcelist=$work/etc/sources.list" -o Dir::Etc::sourceparts=-
             -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")

if ! apt-get "${apt_private[@]}" -qq update > "$work/update.log" 2>&1; then
    fail "could not fetch Debian $SUITE's source index from $mirror: $(tail -n 3 "$work/update.log" | tr '\n' ' ')"
fi
# apt-get update exits 0 when a download failed (a warning only): no passt in the index says it.
version=${PASST_VERSION:-$(apt-cache "${apt_private[@]}" showsrc passt 2>/dev/null |
                           awk '$1 == "Version:" { print $2 }' | sort -V | tail -n 1 || true)}
[ -n "$version" ] ||
    fail "no passt in Debian $SUITE's source index from $mirror: $(grep -E '^(W|E|Err):' "$work/update.log" | head -n 3 | tr '\n' ' ')"

target=$CACHE/passt-${version//:/_}
if [ -x "$target/passt" ]; then
    say "passt $version already built: $target/passt"
else
    missing=()
    command -v cc > /dev/null || missing+=(gcc)
    [ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
    command -v patch > /dev/null || missing+=(patch)
    command -v xz > /dev/null || missing+=(xz-utils)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing the build tools ${missing[*]}"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
              "${missing[@]}"; } > "$work/tools.log" 2>&1 ||
            fail "could not install ${missing[*]}: $(tail -n 3 "$work/tools.log" | tr '\n' ' ')"
    fi

    say "fetching passt $version (Debian $SUITE) from $mirror"
    for part in --tar-only --diff-only; do
        if ! (cd "$work/fetch" && apt-get "${apt_private[@]}" -qq source --download-only "$part" \
                  "passt=$version") > "$work/fetch.log" 2>&1; then
            fail "could not fetch the source of passt $version: $(grep -E '^(E|Err):' "$work/fetch.log" | head -n 3 | tr '\n' ' ')"
        fi
    done

    say "building passt $version"
    started=$(date +%s)
    orig=$(find "$work/fetch" -name 'passt_*.orig.tar.*' ! -name '*.asc' | head -n 1)
    debian=$(find "$work/fetch" -name 'passt_*.debian.tar.*' ! -name '*.asc' | head -n 1)
    if [ -z "$orig" ] || [ -z "$debian" ]; then fail "apt fetched no source tarballs of passt $version"; fi
    tar -C "$work/src" -xf "$orig"
    src=$(echo "$work"/src/*/)
    tar -C "$src" -xf "$debian"
    if [ -f "$src/debian/patches/series" ]; then  # Debian's fixes, as its build applies them
        grep -v -e '^#' -e '^[[:space:]]*$' "$src/debian/patches/series" | while read -r name _; do
            patch -d "$src" -p1 -s < "$src/debian/patches/$name" || exit 1
        done || fail "a Debian patch of passt $version did not apply"
    fi
    bins=(passt)
    [ "$(uname -m)" = x86_64 ] && bins+=(passt.avx2)  # passt re-executes itself as passt.avx2
    make -C "$src" -j "$(nproc)" VERSION="$version" "${bins[@]}" > "$work/make.log" 2>&1 ||
        fail "make failed for passt $version: $(tail -n 5 "$work/make.log" | tr '\n' ' ')"

    rm -rf "$target.new"
    mkdir -p "$target.new"
    for bin in "${bins[@]}"; do install -m 0755 "$src/$bin" "$target.new/$bin"; done
    echo "$version" > "$target.new/VERSION"
    chmod 0755 "$target.new"
    mv -T "$target.new" "$target"
    say "built passt $version in $(( $(date +%s) - started )) s: $target/passt"
fi

ln -sfn "$(basename "$target")" "$CURRENT.new" && mv -T "$CURRENT.new" "$CURRENT"
rm -f "$FAILED"
echo "$CURRENT/passt"
