#!/usr/bin/env bash
# Install this project into a venv on top of the cluster's PyTorch module, keeping the
# module's torch and torchvision. Run it once on a login node, with the module loaded:
#
#   module load PyTorch-bundle/2.1.2-foss-2023a-CUDA-12.1.1 FFmpeg   # `module spider PyTorch-bundle`
#   bash slurm/install.sh $VSC_DATA/venvs/epic
#
# Why not plain `pip install -e .`: the project requires torchvision, and pip fills a
# missing or too-old torchvision from PyPI, whose newest release pins the newest torch,
# so torch and its CUDA libraries land in the venv beside the module's build. A PyPI
# torchvision next to an EasyBuild torch also fails to load its C++ ops (decode_jpeg,
# nms) because of a different C++ ABI. So torchvision must come from the module, and pip
# must treat the module's versions as fixed:
#   1. `python` must import torch and torchvision (else exit 2 naming the module to load,
#      having created nothing);
#   2. the venv is made with --system-site-packages (an existing one is reused, but not if
#      it holds its own torch or torchvision, as venvs made by the old recipe do);
#   3. VENV/torch-pins.txt pins torch==X and torchvision==Y (the versions pip sees), and
#      VENV/pip.conf makes it the constraint of every later `pip install` in the venv
#      (pip reads $VIRTUAL_ENV/pip.conf as its site configuration);
#   4. `pip install -e` this checkout;
#   5. the venv must still import the module's torch and torchvision, and hold no copy of
#      its own (exit 1 otherwise); then one summary line: versions, CUDA build, path.
set -euo pipefail

readonly USAGE="usage: bash slurm/install.sh VENV_DIR   (after module load PyTorch-bundle/...)"
readonly EXAMPLE_MODULE="PyTorch-bundle/2.1.2-foss-2023a-CUDA-12.1.1"

# Prints, one per line: torch.__version__, torch's distribution version, torch's package
# folder, CUDA build, torchvision likewise (or the import error in its version field),
# whether python runs in a venv, the torch/torchvision distributions installed in this
# python's own site-packages (the venv's, when run by the venv's python), and "end" (so
# that an empty last field survives the command substitution).
readonly PROBE='
import importlib.metadata as md
import os
import sys
import sysconfig


def load(name):
    try:
        module = __import__(name)
    except Exception as exc:  # ImportError, or C++ ops that do not load
        first = (str(exc).splitlines() or [""])[0]
        return ["", "", "", f"{type(exc).__name__}: {first}"]
    try:
        dist = md.version(name)
    except md.PackageNotFoundError:
        dist = ""
    return [module.__version__, dist, os.path.dirname(os.path.realpath(module.__file__)), ""]


torch = load("torch")
cuda = ""
if "torch" in sys.modules:
    build = sys.modules["torch"].version.cuda
    cuda = f"CUDA {build}" if build else "CPU build"
own = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
local = sorted(
    f"{d.name} {d.version}"
    for d in md.distributions(path=sorted(own))
    if d.name.lower() in ("torch", "torchvision")
)
fields = [*torch, cuda, *load("torchvision"), int(sys.prefix != sys.base_prefix), "; ".join(local)]
print(*fields, "end", sep="\n")
'

die() {
    local code=$1
    shift
    printf 'error: %s\n' "$*" >&2
    exit "$code"
}

# Fills the array named by $1 with the probe's fields for python $2 (its last 12 lines: an
# import may print to stdout first).
probe() {
    local -n fields=$1
    local out
    out=$("$2" -c "$PROBE") || die 1 "$2 could not run the torch probe (slurm/install.sh): see the traceback above"
    mapfile -t fields < <(tail -n 12 <<<"$out")
    [[ ${#fields[@]} -eq 12 && ${fields[11]} == end ]] \
        || die 1 "$2 printed an unexpected torch probe (slurm/install.sh): ${out//$'\n'/ | }"
}

# The PyTorch-bundle module matching the loaded PyTorch module, if one is loaded.
bundle_for_loaded_module() {
    local entry
    local -a loaded
    IFS=: read -r -a loaded <<<"${LOADEDMODULES:-}"
    for entry in "${loaded[@]}"; do
        if [[ $entry == PyTorch/* ]]; then
            printf 'PyTorch-bundle/%s' "${entry#PyTorch/}"
            return
        fi
    done
    printf 'PyTorch-bundle/%s-<toolchain>' "$1"
}

if [[ $# -ne 1 || -z $1 ]]; then
    printf '%s\n' "$USAGE" >&2
    exit 2
fi
project=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

command -v python >/dev/null \
    || die 2 "no python on PATH (slurm/install.sh): module load $EXAMPLE_MODULE first (module spider PyTorch-bundle lists the versions here)"
python=$(command -v python)
venv=$(python -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$1")
[[ $venv != *[[:space:]]* ]] \
    || die 2 "venv path '$venv' contains a space (slurm/install.sh VENV_DIR): pip.conf cannot name a constraint file there; pick another folder"

# Step 1: the module's torch and torchvision, before anything is created.
declare -a mod
probe mod "$python"
# mod: 0 torch version, 1 torch dist, 2 torch dir, 3 torch error, 4 cuda,
#      5 tv version, 6 tv dist, 7 tv dir, 8 tv error, 9 in venv, 10 own torch dists
if [[ ${mod[9]} == 1 ]]; then
    die 2 "python is a virtual environment's ($python): run deactivate, then module load $EXAMPLE_MODULE, then slurm/install.sh again"
fi
if [[ -z ${mod[2]} ]]; then
    die 2 "python cannot import torch ($python: ${mod[3]}): module load $EXAMPLE_MODULE first (module spider PyTorch-bundle lists the versions here)"
fi
if [[ -z ${mod[7]} ]]; then
    what="no torchvision"
    [[ ${mod[8]} == ModuleNotFoundError:* ]] || what="a torchvision that does not load"
    die 2 "$what beside the module's torch ${mod[0]} (${mod[2]}: ${mod[8]}): load the module that bundles it, $(bundle_for_loaded_module "${mod[0]}") (module spider PyTorch-bundle), or a torchvision module built for torch ${mod[0]} (module spider torchvision); a torchvision from PyPI would replace this torch"
fi
if [[ -z ${mod[1]} || -z ${mod[6]} ]]; then
    die 2 "torch at ${mod[2]} or torchvision at ${mod[7]} has no package metadata (pip cannot see it): load a module installed with pip, e.g. $EXAMPLE_MODULE"
fi

# Step 2: the venv; one that already holds its own torch would keep shadowing the module.
if [[ -x $venv/bin/python ]]; then
    declare -a old
    probe old "$venv/bin/python"
    if [[ -n ${old[10]} || ${old[2]} != "${mod[2]}" || ${old[7]} != "${mod[7]}" ]]; then
        die 2 "the existing venv does not use the module's torch ($venv holds: ${old[10]:-nothing}; imports torch from ${old[2]:-nowhere}, the module's is ${mod[2]}): remove it (rm -rf $venv) and run slurm/install.sh again"
    fi
else
    python -m venv --system-site-packages "$venv"
fi

# Step 3: pins that every pip install in this venv obeys.
pins=$venv/torch-pins.txt
printf 'torch==%s\ntorchvision==%s\n' "${mod[1]}" "${mod[6]}" >"$pins"
# The module's numpy too, where it has one: torch 2.1 is built against numpy 1.x, and a
# later install asking for numpy 2 would break it.
python -c 'import importlib.metadata as m; print("numpy==" + m.version("numpy"))' \
    >>"$pins" 2>/dev/null || true
printf '[install]\nconstraint = %s\n' "$pins" >"$venv/pip.conf"

# Step 4: the project. --constraint again, as PIP_CONSTRAINT in the environment would
# override the pip.conf entry.
"$venv/bin/python" -m pip install --constraint "$pins" -e "$project" \
    || die 1 "pip could not install $project (into $venv): see pip's messages above; fix that and run slurm/install.sh again (the venv and its pins are kept)"

# Step 5: the venv must still run the module's torch.
declare -a now
probe now "$venv/bin/python"
if [[ -n ${now[10]} || ${now[1]} != "${mod[1]}" || ${now[2]} != "${mod[2]}" \
    || ${now[6]} != "${mod[6]}" || ${now[7]} != "${mod[7]}" ]]; then
    die 1 "pip changed torch in $venv (it holds: ${now[10]:-nothing}; imports torch ${now[1]:-none} from ${now[2]:-nowhere}, torchvision ${now[6]:-none}; the module has torch ${mod[1]} at ${mod[2]}, torchvision ${mod[6]}): check PIP_CONSTRAINT and pip config list, then rm -rf $venv and run slurm/install.sh again"
fi
printf 'ok: torch %s (%s), torchvision %s, torch from %s; venv %s pins them (torch-pins.txt via pip.conf)\n' \
    "${now[0]}" "${now[4]}" "${now[5]}" "${now[2]}" "$venv"
