#!/usr/bin/env bash
# GPU readiness check: the SDXL-SG figures of one GPU, in one run of under 8 minutes, without Ray.
#
#   bench/gpu_check.sh [--wheels DIR] [--out DIR] [--budget SECONDS]   # CUDA GPU, full-size models, bf16
#   bench/gpu_check.sh --tiny [--out DIR]                               # CPU, tiny models (a smoke test)
#   bench/gpu_check.sh --download-wheels DIR [--python-version 3.12]    # here: fetch the wheels for a bare machine
#
# Stages, each one process bounded by `timeout`, in this order:
#   train       bench/train_step.py's main, --size full, at 512² batch 1 (training's default), 512² batch 8 and
#               1024² batch 1, the median of 10 steps after a warm-up step: step time, samples/s, MFU and peak
#               memory of the cached and the raw (uncached) step
#   generation  bench/generation_speed.py --size full, 1024², 30 steps: s/image of SDXL-SG vs plain SDXL
#   features    bench/metrics_throughput.py --features-only: Inception (FID) and CLIP ViT-B-32 / ViT-L-14-336
#               (CLIP score / CMMD) image features, images/s on 1024² images
# Every model is built from its config with random weights (speed does not depend on them; nothing is
# downloaded). Each stage gets min(its cap, what is left of --budget, default 440 s); a stage that fails or runs
# out of time is recorded as such and the next one runs. --tiny runs the same stages on CPU with tiny models,
# small sizes, 1-2 steps and one thread each, the training stage beside the other two (64²/128² training, 64²
# generation): its figures only show that every path runs.
#
# Needs: python3 with torch (and its torchvision), transformers, accelerate, safetensors, pyarrow, numpy. Whatever
# of diffusers, open_clip_torch, pydantic and their small dependencies (timm, ftfy, wcwidth, pillow, ...) is not
# importable is installed with `pip install --no-index --no-deps --target` from the wheels in --wheels DIR (or
# $GPU_CHECK_WHEELS, else the repo's .whl/) into a private folder put on PYTHONPATH ($GPU_CHECK_SITE, default a
# temporary one); the machine's environment is left alone. Ray is never imported. $PYTHON picks the interpreter
# (default python3).
#
# Output: one line per stage on stderr; at the end one JSON summary on stdout (figures, stage status and seconds,
# the targets: cache >= 1.5x raw samples/s at 512² batch 1, SDXL-SG generation overhead <= +3%). With --out DIR, also
# DIR/summary.json and DIR/gpu_check.log (every stage's output). Exit status 0 when every stage succeeded.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
MODE=gpu
WHEELS=${GPU_CHECK_WHEELS:-}
OUT_DIR=""
BUDGET=""
DOWNLOAD=""
PY_VERSION=3.12

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while (($#)); do
    case $1 in
        --tiny | --cpu) MODE=tiny ;;
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
        --out) OUT_DIR=${2:?--out needs a folder}; shift ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
        --download-wheels) DOWNLOAD=${2:?--download-wheels needs a folder}; shift ;;
        --python-version) PY_VERSION=${2:?--python-version needs a version}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# import name -> distribution, for what the script may install from wheels (torchvision must match torch: not here)
WHEEL_MODULES=(
    diffusers:diffusers open_clip:open_clip_torch timm:timm ftfy:ftfy wcwidth:wcwidth
    pydantic:pydantic pydantic_core:pydantic_core annotated_types:annotated_types
    typing_inspection:typing_inspection importlib_metadata:importlib_metadata zipp:zipp PIL:pillow
)

if [[ -n $DOWNLOAD ]]; then
    # Pinned to the versions of this environment ($PYTHON), for CPython $PY_VERSION on x86-64 Linux.
    mkdir -p "$DOWNLOAD"
    specs=()
    for entry in "${WHEEL_MODULES[@]}" typing_extensions:typing_extensions; do
        dist=${entry#*:}
        version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist" 2>/dev/null || true)
        specs+=("$dist${version:+==$version}")
    done
    platforms=()
    for platform in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
        platforms+=(--platform "${platform}_x86_64")
    done
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        "${platforms[@]}" -d "$DOWNLOAD" "${specs[@]}"
    ls -1 "$DOWNLOAD" >&2
    exit 0
fi

START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [[ -n $OUT_DIR ]]; then
    mkdir -p "$OUT_DIR"
    OUT_DIR=$(cd "$OUT_DIR" && pwd)
fi
LOG=${OUT_DIR:-$WORK}/gpu_check.log
: >"$LOG"
say() { echo "gpu_check [$((SECONDS - START))s] $*" >&2; }

# --- environment: install what is missing from the wheels, offline, no Ray --------------------------------------
SITE=${GPU_CHECK_SITE:-$WORK/site}  # on PYTHONPATH only when something is installed there
missing=$("$PYTHON" - "${WHEEL_MODULES[@]}" <<'EOF'
import importlib.util, sys


def present(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


dists = [entry.split(":")[1] for entry in sys.argv[1:] if not present(entry.split(":")[0])]
if "pydantic" in dists:
    dists.append("typing_extensions")  # pydantic needs a recent one: the wheel's shadows an older installed copy
print(" ".join(dists))
EOF
)
if [[ -n $missing ]]; then
    if [[ -z $WHEELS && -d $REPO/.whl ]]; then
        WHEELS=$REPO/.whl  # where the device machine's notes put carried wheels
    fi
    if [[ -z $WHEELS || ! -d $WHEELS ]]; then
        echo "gpu_check: not importable: $missing; pass --wheels DIR (made with --download-wheels DIR)" >&2
        exit 1
    fi
    say "installing from $WHEELS into $SITE: $missing"
    # shellcheck disable=SC2086  # $missing is a list of names
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --disable-pip-version-check \
        --find-links "$WHEELS" --target "$SITE" $missing >>"$LOG" 2>&1 || {
        tail -n 20 "$LOG" >&2
        echo "gpu_check: pip install from $WHEELS failed" >&2
        exit 1
    }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
if [[ $MODE == tiny ]]; then
    export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread: the CI machine is shared
fi
"$PYTHON" - "$MODE" >>"$LOG" 2>&1 <<'EOF' || { tail -n 5 "$LOG" >&2; echo "gpu_check: environment not ready" >&2; exit 1; }
import importlib.metadata, importlib.util, sys


def present(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


need = "diffusers numpy open_clip PIL pyarrow pydantic safetensors timm torch torchvision transformers".split()
if missing := [name for name in need if not present(name)]:
    raise SystemExit(f"not importable: {missing} (torchvision must be the build that matches torch)")
dists = "torch torchvision transformers diffusers open_clip_torch pydantic".split()
print("environment:", {name: importlib.metadata.version(name) for name in dists})
if sys.argv[1] == "gpu":
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
    print("device:", torch.cuda.get_device_name())
EOF

# --- stages --------------------------------------------------------------------------------------------------------
if [[ $MODE == gpu ]]; then
    BUDGET=${BUDGET:-440}
    SIZE=full DEVICE=cuda
    PEAK=()
    TRAIN=("512 1 10" "512 8 10" "1024 1 10")  # resolution, batch size, timed steps; the target is the first's
    GENERATION=(1024 30 4)          # resolution, denoising steps, timed images per pipeline (ABBA order)
    FEATURES=(--images 256 --size 1024 --batch-size 64 --rounds 2 --clip ViT-B-32 --clip ViT-L-14-336)
    CAPS=(240 150 120)              # seconds: train, generation, features
else
    BUDGET=${BUDGET:-420}  # ~45 s on two idle cores; generous caps for a busy shared machine
    SIZE=tiny DEVICE=cpu
    PEAK=(--peak-tflops 0.05)  # a nominal CPU peak: measuring it would cost ~10 s a stage
    TRAIN=("64 1 1" "128 1 1")
    GENERATION=(64 2 2)
    FEATURES=(--images 4 --size 64 --batch-size 2 --rounds 1 --clip tiny)
    CAPS=(300 200 200)
fi

: >"$WORK/stages.tsv"
stage() {  # stage NAME CAP COMMAND...: run COMMAND within min(CAP, what is left of the budget)
    local name=$1 cap=$2 left limit rc=0 status began=$SECONDS
    shift 2
    left=$((BUDGET - (SECONDS - START) - 12))  # 12 s: timeout's grace period and the summary
    limit=$((cap < left ? cap : left))
    if ((limit < 15)); then
        say "$name: skipped, no time left in the ${BUDGET}s budget"
        printf '%s\tskipped\t0\n' "$name" >>"$WORK/stages.tsv"
        return 0
    fi
    say "$name: started (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    { echo "=== $name: $status (exit $rc) after $((SECONDS - began))s: ${*//$'\n'/ }"; cat "$WORK/$name.log"; } >"$WORK/$name.report"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - began))" >>"$WORK/stages.tsv"
    say "$name: $status after $((SECONDS - began))s"
    if [[ $status != ok ]]; then
        tail -n 15 "$WORK/$name.log" | sed "s/^/  $name| /" >&2
    fi
}

# Every training run in one process (one import of torch and diffusers, ~10 s); each writes its figures as it ends,
# and a run that fails does not stop the next.
TRAIN_MAIN='import gc, sys, traceback
sys.path.insert(0, sys.argv[1])
import torch
import train_step
failed = 0
for argv in sys.argv[2:]:
    try:
        train_step.main(argv.split("\t"))
    except BaseException:
        traceback.print_exc()
        failed = 1
    gc.collect()
    torch.cuda.empty_cache()
sys.exit(failed)'
train_runs=()
for index in "${!TRAIN[@]}"; do
    read -r resolution batch steps <<<"${TRAIN[$index]}"
    args=(--size "$SIZE" --device "$DEVICE" --resolution "$resolution" --batch-size "$batch" --steps "$steps" "${PEAK[@]}"
        --json "$WORK/train_$index.json")
    train_runs+=("$(IFS=$'\t'; echo "${args[*]}")")
done
if [[ $MODE == tiny ]]; then  # two cores here: the smoke test runs the training stage beside the other two
    stage train "${CAPS[0]}" "$PYTHON" -c "$TRAIN_MAIN" "$REPO/bench" "${train_runs[@]}" &
    train_pid=$!
else  # one stage at a time on the GPU, so that each one's timings are its own
    stage train "${CAPS[0]}" "$PYTHON" -c "$TRAIN_MAIN" "$REPO/bench" "${train_runs[@]}"
fi
stage generation "${CAPS[1]}" "$PYTHON" "$REPO/bench/generation_speed.py" --size "$SIZE" --device "$DEVICE" \
    --resolution "${GENERATION[0]}" --steps "${GENERATION[1]}" --rounds "${GENERATION[2]}" --json "$WORK/generation.json"
stage features "${CAPS[2]}" "$PYTHON" "$REPO/bench/metrics_throughput.py" --features-only "${FEATURES[@]}" \
    --json "$WORK/features.json"
if [[ -n ${train_pid:-} ]]; then
    wait "$train_pid" || true
fi
for name in train generation features; do
    if [[ -f $WORK/$name.report ]]; then cat "$WORK/$name.report" >>"$LOG"; fi
done

# --- summary -------------------------------------------------------------------------------------------------------
"$PYTHON" - "$WORK" "$MODE" "$((SECONDS - START))" "$BUDGET" >"$WORK/summary.json" <<'EOF'
import importlib.metadata, json, platform, sys
from pathlib import Path

work, mode, seconds, budget = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def load(name):
    path = work / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


devices = [figures["device"] for name in ("generation", "features") if (figures := load(name))]
summary = {
    "mode": "gpu (full size, bf16)" if mode == "gpu" else "tiny (CPU, tiny models: a smoke test, not figures)",
    "device": devices[0] if devices else None,
    "versions": {name: importlib.metadata.version(name) for name in ("torch", "diffusers", "transformers")},
    "python": platform.python_version(),
    "seconds": seconds,
    "budget_s": budget,
    "stages": {},
    "train": [],
    "generation": None,
    "features": None,
}
for line in (work / "stages.tsv").read_text().splitlines():
    name, status, took = line.split("\t")
    summary["stages"][name] = {"status": status, "seconds": int(took)}
for path in sorted(work.glob("train_*.json"), key=lambda p: int(p.stem.split("_")[1])):
    figures = json.loads(path.read_text())
    paths = figures["results"]
    entry = {"resolution": figures["args"]["resolution"], "batch_size": figures["args"]["batch_size"],
             "steps": figures["args"]["steps"], "peak_tflops": figures["peak_flops"] / 1e12}
    for path in ("cache", "raw"):
        r = paths[path]
        entry[path] = {k: r[k] for k in ("samples_per_s", "step_s", "mfu", "flops", "peak_mem_mib")}
    entry["cache_speedup"] = entry["cache"]["samples_per_s"] / entry["raw"]["samples_per_s"]
    summary["train"].append(entry)
if (figures := load("generation")) is not None:
    summary["generation"] = {k: v for k, v in figures.items() if k not in ("args", "device")}
if (figures := load("features")) is not None:
    summary["features"] = {"images": figures["args"]["images"], "size": figures["args"]["size"],
                           "batch_size": figures["args"]["batch_size"],
                           "inception_images_per_s": figures["inception_images_per_s"],
                           "clip_images_per_s": figures["clip_images_per_s"]}
targets = {}
if summary["train"]:
    first = summary["train"][0]
    targets[f"cache_speedup_{first['resolution']}_batch{first['batch_size']}>=1.5"] = first["cache_speedup"] >= 1.5
if summary["generation"]:
    targets["generation_overhead<=0.03"] = summary["generation"]["overhead"] <= 0.03
summary["targets"] = targets
summary["targets_apply"] = mode == "gpu"
summary["ok"] = all(s["status"] == "ok" for s in summary["stages"].values())
print(json.dumps(summary, indent=2))
EOF
if [[ -n $OUT_DIR ]]; then
    cp "$WORK/summary.json" "$OUT_DIR/summary.json"
fi
say "done in $((SECONDS - START))s${OUT_DIR:+; $OUT_DIR/summary.json and $OUT_DIR/gpu_check.log}"
cat "$WORK/summary.json"
if cut -f2 "$WORK/stages.tsv" | grep -qv '^ok$'; then
    exit 1
fi
