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

# Exit codes of a job (docs/conventions.md, epicdata.errors.ExitCode): a checkpoint was
# saved and the job asks to be requeued (SIGUSR1); the job was told to stop (SIGTERM), saved
# last.pt and did not requeue itself (run the same command again to resume).
EPIC_EXIT_REQUEUE=75
EPIC_EXIT_STOPPED=76

# epic_run_resumable RUN_DIR COMMAND ARGS...: run a command that checkpoints on SIGUSR1
# (epic-train, srun epic-train) in the background and return its exit code. The SIGUSR1 or
# SIGTERM this shell gets is recorded in EPIC_SIGNAL for epic_finish, and passed on to the
# command as SIGUSR1 either way (save last.pt at the next step, exit 75):
#   SIGUSR1: `--signal=B:USR1@300` before the time limit, `scancel --signal=USR1 --batch`;
#            the job requeues itself.
#   SIGTERM: scancel, a time limit without the signal, preemption, `scontrol requeue`; the
#            job stops (exit 76) unless SLURM requeues it or the site sets
#            EPIC_REQUEUE_ON_TERM=1.
# On SIGTERM, RUN_DIR/job_end.json is written at once (no checkpoint yet): when the command
# cannot save before SLURM's KillWait ends in SIGKILL, that kills this shell too, and the
# marker still tells epic-slurm that the run was stopped.
epic_run_resumable() {
    EPIC_MARK_DIR=$1
    shift
    EPIC_SIGNAL=
    EPIC_CHILD=
    EPIC_CHILD_NAME=${1##*/}
    trap 'epic_on_signal SIGUSR1' USR1
    trap 'epic_on_signal SIGTERM' TERM
    "$@" &
    EPIC_CHILD=$!
    if [[ -n ${EPIC_SIGNAL} ]]; then
        kill -USR1 "${EPIC_CHILD}" 2>/dev/null  # the signal came before the command started
    fi
    while true; do
        EPIC_RC=0
        wait "${EPIC_CHILD}" || EPIC_RC=$?
        kill -0 "${EPIC_CHILD}" 2>/dev/null || break  # a trap interrupted wait: wait again
    done
    trap - USR1 TERM
    return "${EPIC_RC}"
}

# epic_on_signal SIGUSR1|SIGTERM: the trap of epic_run_resumable.
epic_on_signal() {
    # SIGTERM wins: a user who cancels after the pre-timeout SIGUSR1 wants the job to end.
    if [[ ${EPIC_SIGNAL} != SIGTERM ]]; then
        EPIC_SIGNAL=$1
    fi
    if [[ $1 == SIGTERM ]]; then
        epic_log "SIGTERM: asking ${EPIC_CHILD_NAME} to save last.pt and stop"
        epic_job_end "${EPIC_MARK_DIR}" SIGTERM false false
    else
        epic_log "SIGUSR1: asking ${EPIC_CHILD_NAME} to save last.pt; the job then requeues itself"
    fi
    if [[ -n ${EPIC_CHILD} ]]; then
        kill -USR1 "${EPIC_CHILD}" 2>/dev/null
    fi
}

# epic_job_end RUN_DIR SIGNAL REQUEUED CHECKPOINT: write RUN_DIR/job_end.json atomically, the
# marker epic-slurm pipeline and summary read (stopped, requeued); REQUEUED and CHECKPOINT
# are true or false. Not written when RUN_DIR does not exist yet: the command was stopped
# before it created the run, so there is nothing to resume.
epic_job_end() {
    local run_dir=$1 signal=$2 requeued=$3 checkpoint=$4 task=null tmp
    [[ -d ${run_dir} ]] || return 0
    if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
        task="\"${SLURM_ARRAY_TASK_ID}\""
    fi
    tmp="${run_dir}/.job_end.json.$$.tmp"
    if printf '{"signal": "%s", "job_id": "%s", "array_task_id": %s, "date": "%s", "requeued": %s, "checkpoint": %s}\n' \
        "${signal}" "${SLURM_JOB_ID:-}" "${task}" "$(date -Iseconds)" "${requeued}" \
        "${checkpoint}" >"${tmp}" && mv -f "${tmp}" "${run_dir}/job_end.json"; then
        return 0
    fi
    rm -f "${tmp}"
    epic_log "error: cannot write ${run_dir}/job_end.json: epic-slurm summary may not show how this job ended" >&2
}

# epic_requeued_by_slurm: whether SLURM itself is requeueing this job (`scontrol requeue`,
# preemption with PreemptMode=REQUEUE), which sends SIGTERM like scancel. Both show the job
# COMPLETING; a requeue has already counted the next start in Restarts (SLURM 22.05).
epic_requeued_by_slurm() {
    local job
    job=$(scontrol show job --oneliner "${SLURM_JOB_ID}" 2>/dev/null) || return 1
    [[ ${job} =~ [[:space:]]Restarts=([0-9]+) ]] || return 1
    (( BASH_REMATCH[1] > ${SLURM_RESTART_COUNT:-0} ))
}

# epic_requeue RUN_DIR SIGNAL CHECKPOINT: requeue this job (it resumes with --resume auto)
# and exit 0; exit 1 when SLURM refuses.
epic_requeue() {
    local run_dir=$1 signal=$2 checkpoint=$3 out
    epic_job_end "${run_dir}" "${signal}" true "${checkpoint}"
    # Said before the requeue: SLURM kills this batch shell as soon as it requeues the
    # job, often before a line after `scontrol requeue` is written.
    if [[ ${checkpoint} == true ]]; then
        epic_log "checkpoint saved; requeueing job ${SLURM_JOB_ID}: it resumes with --resume auto"
    else
        epic_log "stopped by ${signal} before last.pt was saved; requeueing job ${SLURM_JOB_ID}: it resumes from the run's last checkpoint"
    fi
    if out=$(scontrol requeue "${SLURM_JOB_ID}" 2>&1); then
        :
    elif [[ ${out} == *"pending"* || ${out} == *"already"* ]]; then
        # scontrol requeue or a preemption from outside came first: SLURM requeued the
        # job already (and printed "CANCELLED ... DUE TO JOB REQUEUE" above).
        epic_log "job ${SLURM_JOB_ID} was requeued from outside already"
    else
        epic_job_end "${run_dir}" "${signal}" false "${checkpoint}"
        epic_log "error: scontrol requeue ${SLURM_JOB_ID} failed (${out}): resubmit the same command, it resumes from last.pt"
        exit 1
    fi
    exit 0
}

# epic_finish RUN_DIR RC [RESUME COMMAND...]: end the job after epic_run_resumable by what
# the command's exit code RC and the signal this shell got say (docs/cluster.md section 5):
#   stopped by SIGUSR1 (RC 75: last.pt saved, or killed by the signal before it could
#   save): write the marker and requeue, exit 0;
#   stopped by SIGTERM: requeued by SLURM itself (exit 0), or by this job when the site sets
#   EPIC_REQUEUE_ON_TERM=1; else the marker (requeued false), the RESUME COMMAND in the
#   log, exit 76;
#   any other failure: RUN_DIR/FAILED (epic-slurm summary and pipeline read it), exit RC.
epic_finish() {
    local run_dir=$1 rc=$2 signal=${EPIC_SIGNAL:-} checkpoint=false resume
    shift 2
    if [[ ${rc} -eq ${EPIC_EXIT_REQUEUE} ]]; then
        checkpoint=true
        # 75 while this shell got no signal: the ranks of train_multi.sbatch got the
        # pre-timeout SIGUSR1 themselves (--signal=USR1@300, without "B:").
        signal=${signal:-SIGUSR1}
    fi
    # Stopped by the signal: saved (75), or killed by it before its handler was in place.
    if [[ -n ${signal} && ( ${checkpoint} == true || ${rc} -eq 138 || ${rc} -eq 143 ) ]]; then
        if [[ ${signal} == SIGTERM ]] && epic_requeued_by_slurm; then
            epic_job_end "${run_dir}" "${signal}" true "${checkpoint}"
            epic_log "SIGTERM: SLURM is requeueing job ${SLURM_JOB_ID} (scontrol requeue or preemption): it resumes from last.pt"
            exit 0
        fi
        if [[ ${signal} == SIGUSR1 || ${EPIC_REQUEUE_ON_TERM:-0} == 1 ]]; then
            epic_requeue "${run_dir}" "${signal}" "${checkpoint}"
        fi
        epic_job_end "${run_dir}" "${signal}" false "${checkpoint}"
        if [[ ${checkpoint} == true ]]; then
            epic_log "stopped by SIGTERM (scancel, time limit or preemption): last.pt saved, job ${SLURM_JOB_ID:-?} not requeued (exit ${EPIC_EXIT_STOPPED})"
        else
            epic_log "stopped by SIGTERM (scancel, time limit or preemption) before last.pt was saved: job ${SLURM_JOB_ID:-?} not requeued (exit ${EPIC_EXIT_STOPPED}); the run resumes from its last checkpoint"
        fi
        if [[ $# -gt 0 ]]; then
            printf -v resume '%q ' "$@"
            epic_log "to resume, run: ${resume% } (or again the epic-slurm pipeline or sweep command that submitted this job)"
        fi
        exit "${EPIC_EXIT_STOPPED}"
    fi
    if [[ -n ${signal} ]]; then
        epic_job_end "${run_dir}" "${signal}" false false
    fi
    if [[ ${rc} -ne 0 ]]; then
        mkdir -p "${run_dir}"
        printf 'exit %s, job %s, %s\n' "${rc}" "${SLURM_JOB_ID:-?}" "$(date '+%Y-%m-%d %H:%M:%S')" >"${run_dir}/FAILED"
        epic_log "exited with ${rc}: recorded in ${run_dir}/FAILED"
    fi
    exit "${rc}"
}
