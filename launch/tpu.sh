#!/usr/bin/env bash
# Run `python -m gandl.main` on every worker of a Cloud TPU VM and keep it running through preemptions.
# Every gandl mode resumes from what its workdir already holds (training from the latest checkpoint), so a
# relaunch is the same command on a recreated VM. See usage() or docs/cloud.md.
set -euo pipefail

readonly REMOTE_DIR="gandl"  # on each worker, in the ssh user's home

NAME=""
WORKDIR=""
CONFIG="configs/rxrx19a.py"
MODE="train"
ZONE="europe-west4-a"
PROJECT=""
TYPE="v3-8"
VERSION="tpu-ubuntu2204-base"
SPOT=0
QUEUED=0
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly CHECKOUT="${REPO}"  # the code that checks the config locally, whatever --repo the workers get
REF=""
MAX_RESTARTS=20
POLL=60
KEEP=0
DRY_RUN=0
CHECK=1
COMPILE="step,main_step,embed"
OVERRIDES=()
RESTARTS=0
DRY_EXISTS=0  # --dry-run: whether the VM would exist by now
ARCHIVE=""

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh --name NAME --workdir gs://BUCKET/DIR [options] [--config.FIELD=VALUE ...]

Checks the config here for the TPU type (python -m gandl.main --mode check --devices TYPE: with libtpu installed,
pip install -e ".[tpu]", XLA compiles the programs for the TPU's topology and the check prints their memory per
core, FLOPs and roofline bound, and refuses a config that does not fit; a result is cached), then creates the TPU VM (or its queued resource) unless it exists, copies the code to every worker and installs it
(launch/worker_setup.sh), runs `python -m gandl.main` on all workers, and relaunches after a preemption: the
VM is recreated (or re-queued), the code reinstalled and the same command rerun, which resumes from the
workdir's latest checkpoint. A job that exits non-zero on a healthy VM is rerun on it (a lost connection, a
transient error); every relaunch counts against --max-restarts; one that exits 2 (gandl refused its config or
command line) is not rerun, and the VM is left. The VM is deleted when the job has finished.

  --name NAME          TPU VM name, also the queued resource's (required)
  --workdir gs://...   the gandl workdir, on Cloud Storage (required)
  --config FILE        config file, relative to the repository root   [configs/rxrx19a.py]
  --mode MODE          gandl.main mode                                 [train]
  --config.FIELD=VAL   config overrides, any number, passed on unchanged
  --zone ZONE                                                          [europe-west4-a]
  --project PROJECT                                                    [gcloud's default]
  --type TYPE          accelerator type: v3-8, v3-32, v4-8, ...        [v3-8]
  --version VERSION    TPU VM runtime                                  [tpu-ubuntu2204-base]
  --spot               a spot VM: cheap, preemptible
  --queued             create through a queued resource, which waits for capacity (with --spot: spot capacity)
  --repo URL|PATH      a git URL to clone on the workers, or a local git checkout to copy (tracked and
                       untracked, not ignored files, as they are on disk)   [this checkout]
  --ref REF            with a git URL: the branch, tag or commit           [the default branch]
  --max-restarts N     relaunches allowed: preemptions, failed runs, failed creations   [20]
  --poll SECONDS       wait between state checks                       [60]
  --keep               keep the VM after the job has finished
  --compile LIST       programs the local check compiles for --type: step, main_step, embed, comma-separated;
                       '' for none (the traced estimate)                [step,main_step,embed]
  --skip-check         skip the local config check (it needs this checkout's Python environment)
  --dry-run            print the gcloud commands instead of running them, assuming that no VM exists
                       yet and that every command succeeds (a local checkout is still packed)
  -h, --help
EOF
}

log() {
  printf '[launch/tpu.sh] %s\n' "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

# One shell word: as it is when plain, else single-quoted.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Run a command, or with --dry-run print it as one shell line on the script's stdout.
run() {
  if ((DRY_RUN)); then
    local line="" arg
    for arg in "$@"; do
      line+="${line:+ }$(quote "${arg}")"
    done
    printf '%s\n' "${line}" >&3
  else
    "$@"
  fi
}

gcloud_tpu() {
  local project=()
  if [[ -n "${PROJECT}" ]]; then
    project=(--project "${PROJECT}")
  fi
  run gcloud compute tpus "$@" --zone "${ZONE}" "${project[@]}"
}

pause() {
  if ((!DRY_RUN)); then
    sleep "${POLL}"
  fi
}

parse_args() {
  local flag value
  while (($# > 0)); do
    flag="$1"
    case "${flag}" in
      --config.*=*) OVERRIDES+=("${flag}"); shift; continue ;;
      --config.*) die "write overrides as --config.FIELD=VALUE: ${flag}" ;;
      --spot) SPOT=1; shift; continue ;;
      --queued) QUEUED=1; shift; continue ;;
      --keep) KEEP=1; shift; continue ;;
      --dry-run) DRY_RUN=1; shift; continue ;;
      --skip-check) CHECK=0; shift; continue ;;
      -h | --help) usage; exit 0 ;;
      --*=*) value="${flag#*=}"; flag="${flag%%=*}"; shift ;;
      --*) (($# >= 2)) || die "${flag} needs a value"; value="$2"; shift 2 ;;
      *) die "unexpected argument: ${flag} (see --help)" ;;
    esac
    case "${flag}" in
      --name) NAME="${value}" ;;
      --workdir) WORKDIR="${value}" ;;
      --config) CONFIG="${value}" ;;
      --mode) MODE="${value}" ;;
      --zone) ZONE="${value}" ;;
      --project) PROJECT="${value}" ;;
      --type) TYPE="${value}" ;;
      --version) VERSION="${value}" ;;
      --repo) REPO="${value}" ;;
      --ref) REF="${value}" ;;
      --max-restarts) MAX_RESTARTS="${value}" ;;
      --compile) COMPILE="${value}" ;;
      --poll) POLL="${value}" ;;
      *) die "unknown flag: ${flag} (see --help)" ;;
    esac
  done
  [[ -n "${NAME}" ]] || die "--name is required"
  [[ "${WORKDIR}" == gs://* ]] || die "--workdir must be a gs:// path (the workers share it and it outlives the VM)"
  [[ "${MAX_RESTARTS}" =~ ^[0-9]+$ ]] || die "--max-restarts must be a non-negative integer"
  [[ "${POLL}" =~ ^[0-9]+$ ]] || die "--poll must be a non-negative integer"
}

# One word: the queued resource's state with --queued, else the VM's; NOT_FOUND when it does not exist.
vm_state() {
  local state=""
  if ((QUEUED)); then
    state="$(gcloud_tpu queued-resources describe "${NAME}" --format 'value(state.state)' 2>/dev/null)" || true
  else
    state="$(gcloud_tpu tpu-vm describe "${NAME}" --format 'value(state)' 2>/dev/null)" || true
  fi
  if ((DRY_RUN)); then
    if ((DRY_EXISTS)); then state="READY"; else state="NOT_FOUND"; fi
  fi
  echo "${state:-NOT_FOUND}"
}

is_ready() {
  [[ "$1" == READY || "$1" == ACTIVE ]]
}

create() {
  local spot=()
  if ((SPOT)); then
    spot=(--spot)
  fi
  if ((QUEUED)); then
    gcloud_tpu queued-resources create "${NAME}" --node-id "${NAME}" --accelerator-type "${TYPE}" \
      --runtime-version "${VERSION}" "${spot[@]}"
  else
    gcloud_tpu tpu-vm create "${NAME}" --accelerator-type "${TYPE}" --version "${VERSION}" "${spot[@]}"
  fi
  DRY_EXISTS=1
}

delete() {
  if ((QUEUED)); then
    gcloud_tpu queued-resources delete "${NAME}" --force --quiet
  else
    gcloud_tpu tpu-vm delete "${NAME}" --quiet
  fi
  DRY_EXISTS=0
}

count_restart() {
  RESTARTS=$((RESTARTS + 1))
  if ((RESTARTS > MAX_RESTARTS)); then
    die "$1; giving up after ${MAX_RESTARTS} restarts (the VM is left as it is)"
  fi
  log "$1; restart ${RESTARTS} of ${MAX_RESTARTS}"
}

# The config check on this machine for the TPU type, compiled for its topology where libtpu is installed (else its
# device count simulated on this CPU): a config that cannot run there fails here, before a VM is paid for.
# Python: $GANDL_PYTHON, else the checkout's .venv, else python3.
check_config() {
  local python="${GANDL_PYTHON:-}"
  if [[ -z "${python}" ]]; then
    python="python3"
    if [[ -x "${CHECKOUT}/.venv/bin/python" ]]; then python="${CHECKOUT}/.venv/bin/python"; fi
  fi
  log "checking ${CONFIG} for ${TYPE}"
  (cd "${CHECKOUT}" && "${python}" -m gandl.main --config "${CONFIG}" --workdir "${WORKDIR}" --mode check \
    --devices "${TYPE}" --compile "${COMPILE}" "${OVERRIDES[@]}") >&2 ||
    die "the config check failed for ${TYPE}: nothing was launched"
}

# Wait until the VM is usable: create it when missing, recreate it when preempted or failed.
ensure_ready() {
  local state
  while true; do
    state="$(vm_state)"
    case "${state}" in
      READY | ACTIVE) return 0 ;;
      NOT_FOUND)
        log "creating ${NAME} (${TYPE}, ${VERSION})"
        create || { count_restart "creating ${NAME} failed"; pause; } ;;
      CREATING | STARTING | RESTARTING | REPAIRING | ACCEPTED | PROVISIONING | WAITING_FOR_RESOURCES | DELETING | SUSPENDING)
        log "${NAME} is ${state}; waiting"
        pause ;;
      *)
        log "${NAME} is ${state}; deleting it to create it again"
        delete || { count_restart "deleting ${NAME} failed"; pause; } ;;
    esac
  done
}

# Tracked and untracked-but-not-ignored files of a git checkout, as they are on disk (deleted ones skipped).
pack_checkout() {
  git -C "${REPO}" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do
      if [[ -e "${REPO}/${file}" ]]; then printf '%s\0' "${file}"; fi
    done |
    tar -czf "${ARCHIVE}" -C "${REPO}" --null -T -
}

# Copy (or clone) the code onto every worker and install it there.
install() {
  local fetch
  if [[ -d "${REPO}" ]]; then
    ARCHIVE="${TMPDIR:-/tmp}/${NAME}-gandl.tar.gz"
    pack_checkout
    gcloud_tpu tpu-vm scp "${ARCHIVE}" "${NAME}:${REMOTE_DIR}.tar.gz" --worker=all --quiet
    fetch="rm -rf ${REMOTE_DIR} && mkdir ${REMOTE_DIR} && tar -xzf ${REMOTE_DIR}.tar.gz -C ${REMOTE_DIR}"
  else
    fetch="rm -rf ${REMOTE_DIR} && git clone --quiet $(quote "${REPO}") ${REMOTE_DIR}"
    if [[ -n "${REF}" ]]; then
      fetch+=" && git -C ${REMOTE_DIR} checkout --quiet $(quote "${REF}")"
    fi
  fi
  gcloud_tpu tpu-vm ssh "${NAME}" --worker=all --quiet --command "${fetch} && bash ${REMOTE_DIR}/launch/worker_setup.sh"
}

job_command() {
  local command arg
  command="cd ${REMOTE_DIR} && exec .venv/bin/python -m gandl.main"
  for arg in --config "${CONFIG}" --workdir "${WORKDIR}" --mode "${MODE}" "${OVERRIDES[@]}"; do
    command+=" $(quote "${arg}")"
  done
  echo "${command}"
}

cleanup() {
  if [[ -n "${ARCHIVE}" ]]; then
    rm -f "${ARCHIVE}"
  fi
}

main() {
  exec 3>&1
  parse_args "$@"
  trap cleanup EXIT
  if ((CHECK)); then check_config; fi
  ensure_ready
  install
  local rc state
  while true; do
    rc=0
    gcloud_tpu tpu-vm ssh "${NAME}" --worker=all --quiet --command "$(job_command)" || rc=$?
    if ((rc == 2)); then  # gandl's status for a mistake in the config or the command line: a rerun repeats it
      die "the job refused its config or command line (exit status 2; see its line above): not rerunning it"
    fi
    state="$(vm_state)"
    if ((rc == 0)) && is_ready "${state}"; then
      # A preempted job checkpoints on SIGTERM and exits 0 before the VM stops: look again after a pause.
      pause
      state="$(vm_state)"
      if is_ready "${state}"; then
        break
      fi
    fi
    if is_ready "${state}"; then
      count_restart "the job exited with status ${rc} on a healthy ${NAME}; running it again"
    else
      count_restart "${NAME} is ${state} (job exit status ${rc}); relaunching"
      ensure_ready
      install
    fi
  done
  log "the job has finished: ${WORKDIR}"
  if ((!KEEP)); then
    delete
  fi
}

main "$@"
