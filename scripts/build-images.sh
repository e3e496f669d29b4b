#!/usr/bin/env bash
# Build the TRE's container images: sde-notebook:latest (researcher workspace),
# sde-hub:latest and sde-postgres:latest (docker-compose.yml), from images/<name>.
#
# Air-gapped by design: nothing inside a `docker build` touches the network.
#   * Base image: $BASE_IMAGE if set; else python:3.11-slim-bookworm when it is present or
#     pullable; else a local Debian base `sde-base:local` made with debootstrap from the Debian
#     mirror named in this host's own apt sources (override with $DEBIAN_MIRROR).
#   * Python packages: a wheelhouse per image (images/<name>/wheels, gitignored) downloaded on
#     the host for CPython 3.11 / manylinux x86_64, plus the project's own wheel. Dockerfiles
#     install with `pip install --no-index --find-links /wheels`.
#   * Debian packages (hub: nodejs, iptables, iproute2; postgres: postgresql-15): downloaded by
#     apt in a throwaway container of the base into images/<name>/debs (gitignored), installed
#     with dpkg. configurable-http-proxy: the host's npm install copied to images/hub/chp.
#
# Idempotent and quick when nothing changed: each wheelhouse keeps stamps of what it was made
# from, and each image carries a label with the hash of all its inputs; matching stamps and
# labels mean no download and no build.
#
# Environment:
#   BASE_IMAGE      base for both images (skips base detection)
#   DEBIAN_MIRROR   Debian mirror for debootstrap (default: from /etc/apt sources)
#   PYTHON          host Python with pip, used for `pip download` / `pip wheel`
#   FORCE_BASE=1    rebuild sde-base:local even if it exists
#   IMAGES          which images to build (default: "notebook hub"; "postgres" for compose)
#   SDE_IMAGE_TAG   tag of the built images (default: latest; a work tree of its own can build
#                   and test its own images side by side, see tests/conftest.py)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES_DIR="$ROOT/images"
DEFAULT_BASE="python:3.11-slim-bookworm"
LOCAL_BASE="sde-base:local"
LABEL="org.sde-tre.build-inputs"
# CPython of the bases: Debian bookworm ships 3.11.2; python:3.11-slim is a later 3.11.x.
# Both take cp311 manylinux wheels.
# linux_x86_64: the project's own wheel, which carries the native pseudonym library
# (hatch_build.py; it links the image's libcrypto, so it is not a manylinux wheel)
PIP_TARGET=(--only-binary=:all: --python-version 3.11.2
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform manylinux_2_28_x86_64 --platform linux_x86_64 --platform any)
# The hub installs the project with these extras (postgres: psycopg2 for the compose setup).
HUB_EXTRAS="postgres"

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] error: %s\n' "$*" >&2; exit 1; }

CLEANUP=()
cleanup() { local p; for p in "${CLEANUP[@]}"; do rm -rf -- "$p"; done; }
trap cleanup EXIT

sha_of_files() {
    # sha256 over the names and contents of the given files/directories (caches excluded).
    # The JupyterLab extension's node_modules and build outputs are left out: its stamp
    # (egress_extension/labextension/.stamp, the hash of its sources) stands for them.
    (cd "$ROOT" && find "$@" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' \
        -not -path '*/labextension/node_modules/*' -not -path '*/labextension/lib/*' \
        -not -path '*/labextension/build/*' -not -name tsconfig.tsbuildinfo -not -name .stamp -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}
sha_of_text() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
        echo "$VIRTUAL_ENV/bin/python"
    elif command -v python3 >/dev/null; then
        command -v python3
    else
        die "no python3 on PATH (set PYTHON to a Python with pip)"
    fi
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_id() { docker image inspect -f '{{.Id}}' "$1"; }
image_label() {
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# --- base image -------------------------------------------------------------------------

debian_mirror() {
    # The first Debian mirror in apt's own sources that serves bookworm (deb822 .sources
    # files and one-line .list files). Prints the URI, or nothing.
    "$PY" - <<'EOF'
import glob
import re

def one_line(path):
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb":
            yield parts[1], [parts[2]]

def deb822(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split()

entries = []
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        entries += list(one_line(path))
    except OSError:
        pass
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    entries += list(deb822(path))
for uri, suites in entries:
    if "bookworm" in suites and uri.startswith(("http://", "https://")):
        print(uri)
        break
EOF
}

build_local_base() {
    if ! command -v debootstrap >/dev/null; then
        [[ "$(id -u)" == 0 ]] || die "debootstrap is missing and we are not root to install it"
        log "installing debootstrap (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    [[ "$(id -u)" == 0 ]] || die "debootstrap needs root to build $LOCAL_BASE"
    local mirror="${DEBIAN_MIRROR:-$(debian_mirror)}"
    [[ -n "$mirror" ]] || die "no Debian bookworm mirror in /etc/apt sources; set DEBIAN_MIRROR"
    local rootfs="$IMAGES_DIR/base/rootfs"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    CLEANUP+=("$rootfs")
    local log_file
    log_file="$(mktemp --suffix=.debootstrap.log)"
    log "debootstrap bookworm from $mirror into $rootfs (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$log_file" 2>&1 \
        || { tail -n 20 "$log_file" >&2; die "debootstrap failed (full log: $log_file)"; }
    rm -f "$log_file"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    log "importing $rootfs as $LOCAL_BASE"
    tar -C "$rootfs" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
}

resolve_base() {
    if [[ -n "${BASE_IMAGE:-}" ]]; then
        log "base image: $BASE_IMAGE (from \$BASE_IMAGE)"
        if [[ "$BASE_IMAGE" == "$LOCAL_BASE" ]] && ! image_exists "$LOCAL_BASE"; then
            build_local_base
        fi
        image_exists "$BASE_IMAGE" || docker pull "$BASE_IMAGE" >&2 \
            || die "base image $BASE_IMAGE is neither present nor pullable"
        BASE="$BASE_IMAGE"
        return
    fi
    if image_exists "$DEFAULT_BASE"; then
        log "base image: $DEFAULT_BASE (present locally)"
        BASE="$DEFAULT_BASE"
        return
    fi
    if timeout 20 docker pull -q "$DEFAULT_BASE" >/dev/null 2>&1; then
        log "base image: $DEFAULT_BASE (pulled)"
        BASE="$DEFAULT_BASE"
        return
    fi
    if [[ "${FORCE_BASE:-0}" == 1 ]] || ! image_exists "$LOCAL_BASE"; then
        log "$DEFAULT_BASE is not pullable here: building $LOCAL_BASE with debootstrap"
        build_local_base
    else
        log "base image: $LOCAL_BASE (reused; FORCE_BASE=1 rebuilds it)"
    fi
    BASE="$LOCAL_BASE"
}

# --- wheelhouses ------------------------------------------------------------------------

PROJECT_WHEEL=""
ensure_project_wheel() {
    # Build the project's wheel once per run into a temporary dir; sets PROJECT_WHEEL.
    [[ -n "$PROJECT_WHEEL" ]] && return
    build_labextension
    local out
    out="$(mktemp -d)"
    CLEANUP+=("$out")
    log "building the project wheel (sde-tre)"
    "$PY" -m pip wheel -q --no-deps -w "$out" "$ROOT" >&2
    local wheels=("$out"/sde_tre-*.whl)
    [[ -f "${wheels[0]}" ]] || die "pip wheel did not produce sde_tre-*.whl"
    PROJECT_WHEEL="${wheels[0]}"
}

wheel_requirements() {
    # The Requires-Dist lines of a wheel (what the hub wheelhouse must satisfy).
    "$PY" - "$1" <<'EOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    for line in whl.read(name).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            print(line)
EOF
}

refresh_wheelhouse() {
    # refresh_wheelhouse DIR REQUIREMENT_TEXT -- PIP_DOWNLOAD_ARGS...
    # Re-download DIR from scratch when the requirements or pip target changed.
    local dir="$1" reqs="$2"
    shift 3
    local want
    want="$(sha_of_text "$reqs ${PIP_TARGET[*]}")"
    if [[ -f "$dir/.requirements.sha256" && "$(cat "$dir/.requirements.sha256")" == "$want" ]]
    then
        log "wheelhouse ${dir#"$ROOT"/}: requirements unchanged, not downloading"
        return
    fi
    log "wheelhouse ${dir#"$ROOT"/}: downloading (requirements changed or first run)"
    rm -rf "$dir"
    mkdir -p "$dir"
    "$PY" -m pip download -q "${PIP_TARGET[@]}" -d "$dir" "$@" >&2
    echo "$want" >"$dir/.requirements.sha256"
}

put_project_wheel() {
    # put_project_wheel DIR SOURCE_HASH: (re)place the project wheel in DIR/project when its
    # source changed. It sits apart from the dependencies so that the Dockerfiles can install
    # those in a cached layer and the project on top.
    local dir="$1" want="$2"
    rm -f "$dir"/sde_tre-*.whl # `pip download` of the hub wheel saves a copy here
    if [[ -f "$dir/.project.sha256" && "$(cat "$dir/.project.sha256")" == "$want" ]] \
        && compgen -G "$dir/project/sde_tre-*.whl" >/dev/null; then
        return
    fi
    ensure_project_wheel
    rm -rf "$dir/project"
    mkdir -p "$dir/project"
    cp "$PROJECT_WHEEL" "$dir/project/"
    echo "$want" >"$dir/.project.sha256"
    log "wheelhouse ${dir#"$ROOT"/}: project wheel updated"
}

# --- the JupyterLab extension ----------------------------------------------------------

build_labextension() {
    # The workspace's prebuilt JupyterLab extension (egress_extension/labextension): npm
    # install (the only network use, the npm registry), tsc, `jupyter labextension build`
    # with the host's JupyterLab, which must be the minor version the notebook wheelhouse
    # installs. Its built assets (build/, gitignored) go into the project wheel as shared data
    # (share/jupyter/labextensions/@sde-tre/jupyterlab). Skipped when the stamp matches.
    local dir="$ROOT/egress_extension/labextension" want host_lab image_lab
    host_lab="$("$PY" -c 'import jupyterlab; print(jupyterlab.__version__)' 2>/dev/null)" \
        || die "$PY has no jupyterlab to build the JupyterLab extension with (pip install jupyterlab)"
    image_lab="$(cd "$IMAGES_DIR/notebook/wheels" 2>/dev/null && compgen -G 'jupyterlab-4*.whl' \
        | sed -E 's/^jupyterlab-([0-9]+\.[0-9]+)\..*/\1/' | head -n 1)" || true
    if [[ -n "$image_lab" && "${host_lab%.*}" != "$image_lab" ]]; then
        die "host JupyterLab $host_lab differs from the image's $image_lab.x: the extension would be built for the wrong version"
    fi
    want="$(sha_of_text "$(sha_of_files egress_extension/labextension) $host_lab")"
    if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$want" \
        && -f "$dir/build/package.json" ]]; then
        log "JupyterLab extension: sources unchanged, not building"
        return
    fi
    command -v npm >/dev/null || die "npm is missing (node 20 + npm build the JupyterLab extension)"
    log "JupyterLab extension: npm install, tsc, labextension build (JupyterLab $host_lab)"
    rm -rf "$dir/lib" "$dir/build" "$dir/tsconfig.tsbuildinfo" "$dir/.stamp"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2 \
        && npx --no-install tsc >&2 \
        && PATH="$(dirname "$PY"):$PATH" "$PY" -m jupyterlab.labextensions build . >&2) \
        || die "building the JupyterLab extension failed"
    [[ -f "$dir/build/package.json" ]] || die "the JupyterLab extension build left no build/package.json"
    sha_of_text "$(sha_of_files egress_extension/labextension) $host_lab" >"$dir/.stamp"
}

# --- Debian packages and the proxy -----------------------------------------------------

refresh_debs() {
    # refresh_debs DIR PACKAGES...: the .deb files PACKAGES need on top of $BASE, in DIR.
    # apt downloads them in a throwaway container of $BASE (from the base's own Debian
    # sources), like `pip download` on the host for the wheelhouses: `docker build` itself
    # stays offline and installs them with dpkg.
    local dir="$1"
    shift
    local want
    want="$(sha_of_text "$BASE_ID $*")"
    if [[ -f "$dir/.debs.sha256" && "$(cat "$dir/.debs.sha256")" == "$want" ]]; then
        log "debs ${dir#"$ROOT"/}: unchanged, not downloading"
        return
    fi
    log "debs ${dir#"$ROOT"/}: downloading $* for $BASE"
    rm -rf "$dir"
    mkdir -p "$dir"
    docker run --rm -v "$dir:/out" "$BASE" sh -c "apt-get update -qq >/dev/null \
        && DEBIAN_FRONTEND=noninteractive apt-get install --download-only -y -qq \
           --no-install-recommends $* >/dev/null \
        && (cp /var/cache/apt/archives/*.deb /out/ 2>/dev/null || true) \
        && chown -R $(id -u):$(id -g) /out" >&2 \
        || die "could not download $* with apt in $BASE (is its Debian mirror reachable?)"
    echo "$want" >"$dir/.debs.sha256"
}

refresh_proxy() {
    # configurable-http-proxy for the hub image: the host's npm install (ensure-system.sh),
    # copied into the build context.
    local dir="$IMAGES_DIR/hub/chp" src
    src="$(dirname "$(dirname "$(readlink -f "$(command -v configurable-http-proxy)")")")" \
        || die "configurable-http-proxy is not installed (run scripts/ensure-system.sh)"
    [[ -f "$src/package.json" ]] || die "no configurable-http-proxy package at $src"
    if [[ -f "$dir/package.json" ]] && cmp -s "$src/package.json" "$dir/package.json"; then
        return
    fi
    log "copying configurable-http-proxy from $src"
    rm -rf "$dir"
    cp -a "$src" "$dir"
}

# --- images -----------------------------------------------------------------------------

build_image() {
    # build_image NAME INPUT_HASH: docker build images/NAME as sde-NAME:latest unless the
    # image already carries the same input hash.
    local name="$1" inputs="$2" tag="sde-$1:${SDE_IMAGE_TAG:-latest}"
    if [[ "$(image_label "$tag" "$LABEL")" == "$inputs" ]]; then
        log "$tag is up to date (inputs ${inputs:0:12})"
        return
    fi
    log "building $tag FROM $BASE (inputs ${inputs:0:12})"
    local start=$SECONDS
    docker build --build-arg "BASE_IMAGE=$BASE" --label "$LABEL=$inputs" \
        -t "$tag" "$IMAGES_DIR/$name" >&2
    log "built $tag in $((SECONDS - start)) s"
}

build_notebook() {
    local dir="$IMAGES_DIR/notebook/wheels"
    refresh_wheelhouse "$dir" "$(cat "$IMAGES_DIR/notebook/requirements.txt")" -- \
        -r "$IMAGES_DIR/notebook/requirements.txt"
    # The workspace only uses egress_extension from the project wheel (installed --no-deps),
    # so hub-side edits (sde_spawner/) do not rebuild it.
    put_project_wheel "$dir" "$(sha_of_files pyproject.toml README.md egress_extension sde_airlock)"
    build_image notebook "$(sha_of_text "$BASE_ID $(sha_of_files images/notebook/Dockerfile \
        images/notebook/requirements.txt images/notebook/singleuser_imports.py) \
        $(cat "$dir/.requirements.sha256" \
        "$dir/.project.sha256")")"
}

build_hub() {
    local dir="$IMAGES_DIR/hub/wheels" source_hash reqs
    source_hash="$(sha_of_files pyproject.toml README.md sde_airlock sde_spawner egress_extension)"
    if [[ -f "$dir/.project.sha256" && "$(cat "$dir/.project.sha256")" == "$source_hash" \
        && -f "$dir/.requirements.sha256" ]]; then
        log "wheelhouse images/hub/wheels: project unchanged, not downloading"
    else
        ensure_project_wheel
        reqs="$(wheel_requirements "$PROJECT_WHEEL") [$HUB_EXTRAS]"
        refresh_wheelhouse "$dir" "$reqs" -- "${PROJECT_WHEEL}[${HUB_EXTRAS}]"
        put_project_wheel "$dir" "$source_hash"
    fi
    # CHP, iptables and iproute2: the hub starts the proxy and seals workspaces itself.
    refresh_debs "$IMAGES_DIR/hub/debs" nodejs iptables iproute2
    refresh_proxy
    build_image hub "$(sha_of_text "$BASE_ID $(sha_of_files images/hub/Dockerfile) \
        $(cat "$dir/.requirements.sha256" "$dir/.project.sha256" \
        "$IMAGES_DIR/hub/debs/.debs.sha256" "$IMAGES_DIR/hub/chp/package.json")")"
}

build_postgres() {
    # PostgreSQL for docker-compose.yml (the registry and audit database).
    refresh_debs "$IMAGES_DIR/postgres/debs" postgresql-15
    build_image postgres "$(sha_of_text "$BASE_ID $(sha_of_files images/postgres/Dockerfile \
        images/postgres/entrypoint.sh) $(cat "$IMAGES_DIR/postgres/debs/.debs.sha256")")"
}

main() {
    docker info >/dev/null 2>&1 || die "no Docker engine answers (is dockerd running?)"
    PY="$(pick_python)"
    "$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip (set PYTHON)"
    # Two concurrent runs (tests + make demo) would fight over the same wheelhouses.
    exec 9>"${TMPDIR:-/tmp}/sde-build-images.lock"
    flock 9
    local start=$SECONDS
    resolve_base
    BASE_ID="$(image_id "$BASE")"
    local image
    for image in ${IMAGES:-notebook hub}; do
        case "$image" in
            notebook) build_notebook ;;
            hub) build_hub ;;
            postgres) build_postgres ;;
            *) die "unknown image '$image' (expected notebook, hub or postgres)" ;;
        esac
    done
    log "done in $((SECONDS - start)) s"
}

main "$@"
