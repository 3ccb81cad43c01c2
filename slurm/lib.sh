# shellcheck shell=bash
# Sourced by every job script: the site file, its modules and venv, one header line.
# `epic-slurm submit` exports EPIC_SCRIPTS (the folder of the job scripts and this file) and EPIC_SITE (the site file).

# A log line with the date, like the Python commands' lines.
epic_log() {
    printf '%s %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*"
}

# epic_setup: read the site file, load its modules, activate its venv. First thing a job
# script does, so that the site's values (EPIC_DEVICE, EPIC_SCRATCH, ...) count.
epic_setup() {
    : "${EPIC_SITE:?submit with epic-slurm submit, which sets EPIC_SITE (the site file)}"
    # The job's data paths (set by epic-slurm submit) win over the site's defaults.
    local name
    local -A job=()
    for name in EPIC_STORE EPIC_ANNOTATIONS EPIC_RUN_DIR EPIC_CHECKPOINT EPIC_OUT \
        EPIC_SPLIT EPIC_FORCE EPIC_DEEP EPIC_WORKERS EPIC_GRID; do
        if [[ -n ${!name+x} ]]; then
            job[${name}]=${!name}
        fi
    done
    set -a
    # shellcheck disable=SC1090
    source "${EPIC_SITE}"
    set +a
    for name in "${!job[@]}"; do
        export "${name}=${job[${name}]}"
    done
    if [[ -n "${EPIC_MODULES:-}" ]]; then
        if ! command -v module >/dev/null 2>&1; then
            epic_log "error: EPIC_MODULES is set (${EPIC_MODULES}) but this node has no module command (${EPIC_SITE}): empty it or fix the site's module setup" >&2
            exit 2
        fi
        # shellcheck disable=SC2086  # a list of modules
        module load ${EPIC_MODULES}
    fi
    # shellcheck disable=SC1091
    source "${EPIC_VENV:?the site file sets no EPIC_VENV}/bin/activate"
}

# epic_header COMMAND ARGS...: the job's header line (date, host, job and array ids,
# restart count, versions of python/torch/ffmpeg/the project, the command).
epic_header() {
    epic-slurm header -- "$@"
}

# epic_run_resumable COMMAND ARGS...: run a command that checkpoints on SIGUSR1 (epic-train)
# in the background, hand it the SIGUSR1/SIGTERM this shell gets (`--signal=B:USR1@300`
# before the time limit, scancel, preemption), and return its exit code.
epic_run_resumable() {
    "$@" &
    EPIC_CHILD=$!
    EPIC_CHILD_NAME=${1##*/}
    trap 'epic_log "signal: asking ${EPIC_CHILD_NAME} to checkpoint"; kill -USR1 "${EPIC_CHILD}" 2>/dev/null' USR1 TERM
    while true; do
        EPIC_RC=0
        wait "${EPIC_CHILD}" || EPIC_RC=$?
        kill -0 "${EPIC_CHILD}" 2>/dev/null || break  # a trap interrupted wait: wait again
    done
    trap - USR1 TERM
    return "${EPIC_RC}"
}

# epic_finish RUN_DIR RC: requeue this job when RC is 75 (checkpoint saved), record a failure
# in RUN_DIR/FAILED otherwise (epic-slurm summary and pipeline read it), exit with RC (0 when
# requeued).
epic_finish() {
    local run_dir=$1 rc=$2 out
    if [[ ${rc} -eq 75 ]]; then
        # Said before the requeue: SLURM kills this batch shell as soon as it requeues the
        # job, often before a line after `scontrol requeue` is written.
        epic_log "checkpoint saved; requeueing job ${SLURM_JOB_ID}: it resumes with --resume auto"
        if out=$(scontrol requeue "${SLURM_JOB_ID}" 2>&1); then
            :
        elif [[ ${out} == *"pending"* || ${out} == *"already"* ]]; then
            # scontrol requeue or a preemption from outside came first: SLURM requeued the
            # job already (and printed "CANCELLED ... DUE TO JOB REQUEUE" above).
            epic_log "checkpoint saved; job ${SLURM_JOB_ID} was requeued from outside already"
        else
            epic_log "error: scontrol requeue ${SLURM_JOB_ID} failed (${out}): resubmit the same command, it resumes from last.pt"
            exit 1
        fi
        exit 0
    fi
    if [[ ${rc} -ne 0 ]]; then
        mkdir -p "${run_dir}"
        printf 'exit %s, job %s, %s\n' "${rc}" "${SLURM_JOB_ID:-?}" "$(date '+%Y-%m-%d %H:%M:%S')" >"${run_dir}/FAILED"
        epic_log "exited with ${rc}: recorded in ${run_dir}/FAILED"
    fi
    exit "${rc}"
}
