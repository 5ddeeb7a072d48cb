#!/usr/bin/env bash
# Prepare a Docker engine on a bare Debian machine, without any image registry.
#
#   scripts/prepare-docker.sh          install (if missing), start the engine, build the base image
#   scripts/prepare-docker.sh start    the same
#   scripts/prepare-docker.sh stop     stop the dockerd this script started (images are kept)
#   scripts/prepare-docker.sh status   say whether an engine answers and whether the base exists
#   scripts/prepare-docker.sh build    start, then build rag-api:dev from system/Dockerfile on the base
#
# Idempotent: every step is skipped when its result is already there, so CI can call it on
# every run. Every wait is bounded. No image is pulled: the base image system/Dockerfile starts
# from (BASE_IMAGE, default ${BASE_TAG} below) is a debootstrap'd Debian bookworm minbase with
# Debian's python3 (3.11), python3-venv and ca-certificates, imported with `docker import`.
#
# Environment (all optional):
#   RAG_HARNESS_CACHE      cache dir for the rootfs tarball and the dockerd log (~/.cache/rag-harness)
#   RAG_BASE_IMAGE         tag of the base image (rag-harness/python-base:3.11-bookworm)
#   DEBIAN_MIRROR          mirror for debootstrap (default: the host's apt source, else deb.debian.org)
#   DOCKERD_START_TIMEOUT  seconds to wait for a started dockerd to answer (60)
#   DEBOOTSTRAP_TIMEOUT    seconds allowed for debootstrap (1200)
#   RAG_IMAGE              tag `build` gives the service image (rag-api:dev)
#   PIP_BUILD_CA_BUNDLE    CA bundle handed to pip as a build secret (default: the host's pip
#                          `cert` from PIP_CERT or pip.conf; none when pip has no extra CA)
#   BUILD_TIMEOUT          seconds allowed for the image build (1500)
set -euo pipefail

CACHE_DIR="${RAG_HARNESS_CACHE:-${HOME:-/root}/.cache/rag-harness}"
BASE_TAG="${RAG_BASE_IMAGE:-rag-harness/python-base:3.11-bookworm}"
SUITE=bookworm
BASE_PACKAGES="python3,python3-venv,python-is-python3,ca-certificates"
ROOTFS_TARBALL="${CACHE_DIR}/python-base-${SUITE}-rootfs.tar"
DOCKERD_LOG="${CACHE_DIR}/dockerd.log"
DOCKERD_PIDFILE="/var/run/docker.pid"  # written by dockerd itself
DOCKERD_START_TIMEOUT="${DOCKERD_START_TIMEOUT:-60}"
DEBOOTSTRAP_TIMEOUT="${DEBOOTSTRAP_TIMEOUT:-1200}"
DOCKER_CALL_TIMEOUT=15
RAG_IMAGE="${RAG_IMAGE:-rag-api:dev}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-1500}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[prepare-docker] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

engine_answers() { timeout "${DOCKER_CALL_TIMEOUT}" docker info >/dev/null 2>&1; }

install_packages() {
    local missing=()
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        missing+=(docker.io)
    fi
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "docker.io, iptables and debootstrap are installed"
        return
    fi
    log "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive timeout 900 \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

start_engine() {
    if engine_answers; then
        log "a Docker engine answers ($(timeout "${DOCKER_CALL_TIMEOUT}" docker version --format '{{.Server.Version}}'))"
        return
    fi
    mkdir -p "${CACHE_DIR}"
    # a dockerd that died uncleanly leaves its pid file behind, and a new one refuses to start
    if [[ -s ${DOCKERD_PIDFILE} ]] && ! kill -0 "$(cat "${DOCKERD_PIDFILE}")" 2>/dev/null; then
        log "removing stale ${DOCKERD_PIDFILE}"
        as_root rm -f "${DOCKERD_PIDFILE}"
    fi
    log "starting dockerd (log: ${DOCKERD_LOG})"
    # setsid: the daemon must outlive this script and not get the CI step's signals
    as_root setsid dockerd >>"${DOCKERD_LOG}" 2>&1 </dev/null &
    local deadline=$((SECONDS + DOCKERD_START_TIMEOUT))
    until engine_answers; do
        if ((SECONDS >= deadline)); then
            log "dockerd did not answer within ${DOCKERD_START_TIMEOUT}s; last log lines:"
            tail -n 20 "${DOCKERD_LOG}" >&2 || true
            die "no Docker engine (see ${DOCKERD_LOG})"
        fi
        sleep 1
    done
    log "dockerd answers after $((SECONDS - deadline + DOCKERD_START_TIMEOUT))s"
}

stop_engine() {
    if [[ ! -s ${DOCKERD_PIDFILE} ]]; then
        log "no ${DOCKERD_PIDFILE}: no dockerd started by hand is running"
        return
    fi
    local pid
    pid=$(cat "${DOCKERD_PIDFILE}")
    if ! kill -0 "${pid}" 2>/dev/null; then
        log "dockerd pid ${pid} is gone"
        return
    fi
    log "stopping dockerd (pid ${pid}); containers are stopped, images kept"
    as_root kill -TERM "${pid}"
    local deadline=$((SECONDS + 60))
    while kill -0 "${pid}" 2>/dev/null; do
        ((SECONDS < deadline)) || die "dockerd pid ${pid} still runs 60s after SIGTERM"
        sleep 1
    done
    log "dockerd stopped"
}

# The host's own source for an archive (deb822 or one-line format): $1 is the path's last part
# (debian or debian-security), $2 the fallback.
host_apt_uri() {
    local archive=$1 fallback=$2 uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -E "/${archive}/?\$" | head -n1 || true)
    if [[ -z ${uri} ]]; then
        uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '{print $2}' | grep -E "/${archive}/?\$" | head -n1 || true)
    fi
    echo "${uri:-${fallback}}"
}

debian_mirror() { echo "${DEBIAN_MIRROR:-$(host_apt_uri debian http://deb.debian.org/debian)}"; }

debian_security_mirror() {
    echo "${DEBIAN_SECURITY_MIRROR:-$(host_apt_uri debian-security http://deb.debian.org/debian-security)}"
}

build_rootfs_tarball() {
    local mirror rootfs
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d "${CACHE_DIR}/rootfs.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this very directory
    trap "as_root rm -rf '${rootfs}'" EXIT
    log "debootstrap ${SUITE} minbase + ${BASE_PACKAGES} from ${mirror} (bounded: ${DEBOOTSTRAP_TIMEOUT}s)"
    as_root timeout "${DEBOOTSTRAP_TIMEOUT}" debootstrap --variant=minbase \
        --include="${BASE_PACKAGES}" "${SUITE}" "${rootfs}" "${mirror}" \
        >>"${CACHE_DIR}/debootstrap.log" 2>&1 \
        || { tail -n 20 "${CACHE_DIR}/debootstrap.log" >&2; die "debootstrap failed (see ${CACHE_DIR}/debootstrap.log)"; }
    # debootstrap installs the release as it was; python:3.11-slim-bookworm carries the point
    # and security updates, so this base gets them too
    local security_mirror
    security_mirror=$(debian_security_mirror)
    log "applying ${SUITE}-updates and ${SUITE}-security (${security_mirror})"
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
        "${mirror}" "${SUITE}" "${mirror}" "${SUITE}" "${security_mirror}" "${SUITE}" \
        | as_root tee "${rootfs}/etc/apt/sources.list" >/dev/null
    as_root timeout 900 chroot "${rootfs}" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -qq && apt-get upgrade -y -qq --no-install-recommends' \
        >>"${CACHE_DIR}/debootstrap.log" 2>&1 \
        || { tail -n 20 "${CACHE_DIR}/debootstrap.log" >&2; die "updating the rootfs failed (see ${CACHE_DIR}/debootstrap.log)"; }
    # what a slim image leaves out: package lists, caches, docs, the debootstrap work dir
    as_root rm -rf "${rootfs}/var/lib/apt/lists"/* "${rootfs}/var/cache/apt"/*.bin \
        "${rootfs}/var/cache/apt/archives"/*.deb "${rootfs}/debootstrap" \
        "${rootfs}/usr/share/doc"/* "${rootfs}/usr/share/man"/* "${rootfs}/usr/share/info"/*
    as_root tar --numeric-owner -C "${rootfs}" -cf "${ROOTFS_TARBALL}.partial" .
    as_root mv "${ROOTFS_TARBALL}.partial" "${ROOTFS_TARBALL}"
    as_root rm -rf "${rootfs}"
    trap - EXIT
    log "cached ${ROOTFS_TARBALL} ($(du -h "${ROOTFS_TARBALL}" | cut -f1))"
}

build_base_image() {
    if timeout "${DOCKER_CALL_TIMEOUT}" docker image inspect "${BASE_TAG}" >/dev/null 2>&1; then
        log "base image ${BASE_TAG} exists"
        return
    fi
    mkdir -p "${CACHE_DIR}"
    if [[ -s ${ROOTFS_TARBALL} ]]; then
        log "reusing cached ${ROOTFS_TARBALL}"
    else
        build_rootfs_tarball
    fi
    log "importing ${ROOTFS_TARBALL} as ${BASE_TAG}"
    timeout 300 docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        --message "debootstrap ${SUITE} minbase + ${BASE_PACKAGES} (scripts/prepare-docker.sh)" \
        "${ROOTFS_TARBALL}" "${BASE_TAG}" >/dev/null
    timeout "${DOCKER_CALL_TIMEOUT}" docker run --rm --network none "${BASE_TAG}" \
        python3 -c 'import sys, venv, ssl; assert sys.version_info[:2] == (3, 11), sys.version' \
        || die "${BASE_TAG} has no working python3.11 with venv and ssl"
    log "base image ${BASE_TAG} ready"
}

# A docker CLI that builds with BuildKit (the Dockerfile mounts a build secret). Docker >= 23
# builds with BuildKit through the buildx plugin; Debian's docker.io 20.10 CLI has BuildKit
# built in (DOCKER_BUILDKIT=1) but no buildx. A newer CLI without buildx would fall back to the
# legacy builder, which cannot mount secrets, so it is passed over for /usr/bin/docker.
buildkit_docker() {
    local candidate version major
    if timeout "${DOCKER_CALL_TIMEOUT}" docker buildx version >/dev/null 2>&1; then
        command -v docker
        return
    fi
    for candidate in "$(command -v docker)" /usr/bin/docker; do
        [[ -x ${candidate} ]] || continue
        version=$(timeout "${DOCKER_CALL_TIMEOUT}" "${candidate}" version --format '{{.Client.Version}}' 2>/dev/null || true)
        major=${version%%.*}
        if [[ ${major} =~ ^[0-9]+$ ]] && ((major >= 18 && major < 23)); then
            echo "${candidate}"
            return
        fi
    done
    die "no docker CLI that builds with BuildKit: install the buildx plugin or Debian's docker.io"
}

pip_ca_bundle() {
    if [[ -n ${PIP_BUILD_CA_BUNDLE:-} ]]; then echo "${PIP_BUILD_CA_BUNDLE}"; return; fi
    if [[ -n ${PIP_CERT:-} ]]; then echo "${PIP_CERT}"; return; fi
    local conf
    for conf in /etc/pip.conf "${HOME:-/root}/.config/pip/pip.conf" "${HOME:-/root}/.pip/pip.conf"; do
        [[ -r ${conf} ]] || continue
        sed -nE 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*(.+)[[:space:]]*$/\1/p' "${conf}" | head -n1
    done | head -n1
}

build_service_image() {
    local cli ca_bundle started
    cli=$(buildkit_docker)
    local argv=(build --network host --build-arg "BASE_IMAGE=${BASE_TAG}" --tag "${RAG_IMAGE}")
    ca_bundle=$(pip_ca_bundle)
    if [[ -n ${ca_bundle} ]]; then
        [[ -r ${ca_bundle} ]] || die "pip CA bundle ${ca_bundle} is not readable"
        argv+=(--secret "id=pipcert,src=${ca_bundle}")
    fi
    log "building ${RAG_IMAGE} with ${cli} (BuildKit) on ${BASE_TAG}${ca_bundle:+, pip CA ${ca_bundle} as a build secret}"
    started=${SECONDS}
    DOCKER_BUILDKIT=1 timeout "${BUILD_TIMEOUT}" "${cli}" "${argv[@]}" "${REPO_ROOT}/system" \
        || die "docker build of ${RAG_IMAGE} failed or exceeded ${BUILD_TIMEOUT}s"
    log "built ${RAG_IMAGE} in $((SECONDS - started))s ($(timeout "${DOCKER_CALL_TIMEOUT}" docker image inspect --format '{{.Size}}' "${RAG_IMAGE}" | awk '{printf "%.0f MB", $1/1e6}'))"
}

status() {
    if engine_answers; then
        log "engine: answers ($(timeout "${DOCKER_CALL_TIMEOUT}" docker version --format '{{.Server.Version}}'))"
        if timeout "${DOCKER_CALL_TIMEOUT}" docker image inspect "${BASE_TAG}" >/dev/null 2>&1; then
            log "base image: ${BASE_TAG} present"
        else
            log "base image: ${BASE_TAG} missing"
        fi
    else
        log "engine: no Docker engine answers"
        return 1
    fi
}

case "${1:-start}" in
    start)
        install_packages
        start_engine
        build_base_image
        ;;
    build)
        install_packages
        start_engine
        build_base_image
        build_service_image
        ;;
    stop) stop_engine ;;
    status) status ;;
    *) die "usage: $0 [start|build|stop|status]" ;;
esac
