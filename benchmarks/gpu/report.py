"""Turning the workers' records into verdicts: loss checks (PASS / FAIL), targets (PASS / MISS / n/a),
the Markdown table and the few lines ``scripts/gpu_check.sh`` prints at the end.

``python -m benchmarks.gpu.report RESULT.json ...`` prints those lines for result files already written.
"""

from __future__ import annotations

import json
import sys
from math import inf, nan
from pathlib import Path

if __package__ in (None, ""):  # run by path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.gpu.common import NOT_MEASURED

TARGET_PEAK_GB = {"1.5b": 10.0, "7b": 22.0}  # peak reserved GPU memory per step, each backend
TARGET_SPEEDUP = 1.5  # hf step seconds / unsloth step seconds (medians), per shape
FAILED_RUN = ("error", "oom", "timeout")
# unsloth's LoRA gradients against hf's pass inside this band (different 4-bit kernels, bf16 vs fp32 norms)
UNSLOTH_COSINE, UNSLOTH_REL_L2 = 0.99, 0.1
ROWS = "trainable_tokens_delta"  # PEFT's control-row tensors (thinkless_lite.control_rows.TRAINABLE_ROWS_PARAM)
PARTS = {"load": "(a) imports and load", "verify-loss": "(b) loss and gradients", "bench": "(c/d) timed DeGRPO steps"}


def compare_grads(a: dict, b: dict) -> dict:
    """How far gradients ``a`` are from ``b`` over the tensors both have with the same shape (max abs, max rel,
    relative L2, cosine); ``compared_lora``: how many of those are LoRA tensors."""
    both = set(a) & set(b)
    common = sorted(k for k in both if a[k].shape == b[k].shape)
    out = {"compared_tensors": len(common), "compared_lora": sum("lora_" in k for k in common),
           "shape_mismatch": len(both) - len(common), "only_in_a": len(set(a) - both), "only_in_b": len(set(b) - both)}
    if not common:
        return out
    max_abs = max_rel = dot = na = nb = nd = 0.0
    for k in common:
        x, y = a[k].double(), b[k].double()
        diff = (x - y).abs()
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(diff.max() / y.abs().max().clamp(min=1e-30)))
        dot, na, nb, nd = dot + float((x * y).sum()), na + float((x * x).sum()), nb + float((y * y).sum()), \
            nd + float(((x - y) ** 2).sum())
    return {**out, "max_abs": max_abs, "max_rel": max_rel, "rel_l2": nd ** 0.5 / max(nb ** 0.5, 1e-30),
            "cosine": dot / max((na * nb) ** 0.5, 1e-30)}


def _reason(run: dict) -> str:
    return str(run.get("reason") or run.get("error") or run.get("status", ""))[:300]


def verify_checks(results: dict) -> list[dict]:
    """The loss check's rows. On a GPU every requested backend must run: a skipped one is a FAIL there."""
    import torch

    on_gpu = results["settings"]["device"] == "cuda"
    runs = {(r["shape"], r["backend"]): r for r in results["runs"]}
    rows: list[dict] = []

    def add(check: str, ok: bool, note: str) -> None:
        rows.append({"check": check, "status": "PASS" if ok else "FAIL", "note": note})

    for (shape, backend), run in runs.items():
        tag = f"{shape}/{backend}"
        if run.get("status") != "ok":
            status = "skipped" if run.get("status") == "skipped" and not on_gpu else "FAIL"
            rows.append({"check": f"{tag}: ran", "status": status, "note": _reason(run)})
            continue
        loss, exp_bt, exp_b = run["loss"], run["expected_loss_bt"], run["expected_loss_if_per_sequence"]
        tol = 1e-3 * max(1.0, abs(exp_bt))
        lengths = run["batch"]["prompt_lengths"]
        add(f"{tag}: prompts of mixed lengths", len(set(lengths)) > 1,
            f"{len(set(lengths))} distinct prompt lengths, {min(lengths)} to {max(lengths)} tokens")
        add(f"{tag}: loss == closed form with (B, T) advantages", abs(loss - exp_bt) <= tol,
            f"loss {loss:.6g}, closed form {exp_bt:.6g} ((B,) advantages: {exp_b:.6g}), tolerance {tol:.1e}")
        zero = [n for n in run.get("zero_grad_names", []) if "lora_" in n or ROWS in n]
        add(f"{tag}: every LoRA tensor and control row has a gradient", run["grad_tensors"] > 0 and not zero,
            f"{run['grad_tensors']} tensors with gradients" + (f"; zero: {', '.join(zero[:3])}" if zero else ""))
        add(*_rows_check(tag, run))
        acc = run.get("accumulation") or {}
        acc_ok = (abs(acc.get("loss_sum", inf) - loss) <= tol and acc.get("compared_tensors") == run["grad_tensors"]
                  and acc.get("rel_l2", inf) <= 1e-2 and acc.get("cosine", -inf) >= 0.999)
        add(f"{tag}: gradient accumulation ({acc.get('micro_batches', '?')} micro-batches) == one batch", acc_ok,
            f"summed loss {acc.get('loss_sum', nan):.6g} vs {loss:.6g}; gradients rel L2 {acc.get('rel_l2', nan):.3g}, "
            f"cosine {acc.get('cosine', nan):.6f}")
        if backend == "hf":
            ref = run.get("reference") or {"error": "no reference computed"}
            if "error" in ref:
                for name in ("loss == degrpo_loss on plain-forward log-probs", "gradients == degrpo_loss gradients"):
                    add(f"{tag}: {name}", False, ref["error"])
                continue
            add(f"{tag}: loss == degrpo_loss on plain-forward log-probs", abs(ref["loss"] - loss) <= tol,
                f"degrpo_loss {ref['loss']:.6g}")
            ok = (ref.get("compared_tensors") == run["grad_tensors"] and ref.get("rel_l2", inf) <= 1e-2
                  and ref.get("cosine", -inf) >= 0.999)
            add(f"{tag}: gradients == degrpo_loss gradients", ok,
                f"rel L2 {ref.get('rel_l2', nan):.3g}, cosine {ref.get('cosine', nan):.6f}, max abs "
                f"{ref.get('max_abs', nan):.3g} (pass: rel L2 <= 1e-2, cosine >= 0.999)")
            sens = run.get("per_sequence_vs_bt") or {}
            add(f"{tag}: the gradient check tells (B, T) from (B,) advantages",
                sens.get("cosine", 1.0) < UNSLOTH_COSINE and sens.get("rel_l2", 0.0) > UNSLOTH_REL_L2,
                f"(B,) vs (B, T) gradients: cosine {sens.get('cosine', nan):.4f}, rel L2 "
                f"{sens.get('rel_l2', nan):.3g}: outside the unsloth-vs-hf pass band")
            continue
        hf = runs.get((shape, "hf"))
        if not (hf and hf.get("status") == "ok"):
            rows.append({"check": f"{tag}: gradients == hf's", "status": "FAIL" if on_gpu else "skipped",
                         "note": "no hf run of this shape to compare with"})
            continue
        grads, hf_grads = torch.load(run["grads_file"]), torch.load(hf["grads_file"])
        cmp = compare_grads(grads, hf_grads)
        run["vs_hf"] = cmp
        # Every tensor hf trains (LoRA and control rows) must be trained here too, and compared.
        missing = sorted(k for k in hf_grads if k not in grads or grads[k].shape != hf_grads[k].shape)
        ok = (not missing and cmp["compared_tensors"] > 0 and cmp.get("rel_l2", inf) <= UNSLOTH_REL_L2
              and cmp.get("cosine", -inf) >= UNSLOTH_COSINE)
        add(f"{tag}: gradients == hf's", ok,
            f"{cmp['compared_tensors']} tensors ({cmp['compared_lora']} LoRA); hf trains {len(hf_grads)}"
            + (f", not trained or other shape here: {', '.join(missing[:3])}" if missing else "")
            + f"; rel L2 {cmp.get('rel_l2', nan):.3g}, cosine {cmp.get('cosine', nan):.6f} "
            f"(pass: rel L2 <= {UNSLOTH_REL_L2:g}, cosine >= {UNSLOTH_COSINE:g}: two 4-bit stacks in bf16)")
        hf_rows = sorted(k for k in hf_grads if ROWS in k)
        on_rows = compare_grads({k: grads[k] for k in hf_rows if k in grads}, {k: hf_grads[k] for k in hf_rows})
        run["rows_vs_hf"] = on_rows
        ok = (bool(hf_rows) and on_rows["compared_tensors"] == len(hf_rows)
              and on_rows.get("rel_l2", inf) <= UNSLOTH_REL_L2 and on_rows.get("cosine", -inf) >= UNSLOTH_COSINE)
        add(f"{tag}: control-row gradients == hf's", ok,
            f"{on_rows['compared_tensors']} of hf's {len(hf_rows)} control-row tensors, rel L2 "
            f"{on_rows.get('rel_l2', nan):.3g}, cosine {on_rows.get('cosine', nan):.6f}")
    return rows


def _rows_check(tag: str, run: dict) -> tuple[str, bool, str]:
    """Control rows present and trainable, nothing the recipe trains frozen (``loading.control_rows``)."""
    info = run.get("control_rows") or {}
    tensors, frozen = info.get("tensors") or {}, info.get("frozen")
    ok = bool(tensors) and all(t["trainable"] for t in tensors.values()) and frozen == []
    note = (f"{len(tensors)} control-row tensor(s) ({', '.join(sorted({t['dtype'] for t in tensors.values()}))})"
            + (f"; frozen: {', '.join(frozen[:3])}" if frozen else "") + ("" if tensors else "; none found"))
    return f"{tag}: control rows trainable", ok, note


def load_checks(results: dict) -> list[dict]:
    """Part (a)'s rows: the backend ran, its control rows train and a backward reaches every one of them."""
    on_gpu = results["settings"]["device"] == "cuda"
    rows: list[dict] = []
    for run in results["runs"]:
        tag = f"{run['shape']}/{run['backend']}"
        if run.get("status") != "ok":
            status = "skipped" if run.get("status") == "skipped" and not on_gpu else "FAIL"
            rows.append({"check": f"{tag}: ran", "status": status, "note": _reason(run)})
            continue
        rows.append({"check": f"{tag}: ran", "status": "PASS",
                     "note": f"load {run.get('load_s')} s, backend {run.get('backend_chosen', {}).get('name')}"})
        name, ok, note = _rows_check(tag, run)
        rows.append({"check": name, "status": "PASS" if ok else "FAIL", "note": note})
        grads = run.get("control_row_grads") or {}
        ok = bool(grads) and all(g for g in grads.values())
        rows.append({"check": f"{tag}: a backward reaches every control row", "status": "PASS" if ok else "FAIL",
                     "note": ", ".join(f"{k.split('.')[-4] if k.count('.') > 3 else k}: {v}" for k, v in grads.items())})
    return rows


def verdict(checks: list[dict]) -> str:
    """PASS when something was checked and nothing failed; FAIL when anything failed; else NOT RUN."""
    if any(c["status"] == "FAIL" for c in checks):
        return "FAIL"
    return "PASS" if any(c["status"] == "PASS" for c in checks) else "NOT RUN"


def targets(results: dict) -> list[dict]:
    """PASS / MISS per target; n/a where the run cannot say (CPU, skipped, failed)."""
    on_gpu = results["settings"]["device"] == "cuda"
    runs = {(r["shape"], r["backend"]): r for r in results["runs"]}
    rows = []
    for (shape, backend), run in runs.items():
        if shape not in TARGET_PEAK_GB:
            continue
        limit = TARGET_PEAK_GB[shape]
        peak = (run.get("peak") or {}).get("peak_reserved_gb") if run.get("status") == "ok" else None
        if run.get("status") == "oom":
            status, note = "MISS", "out of memory"
        elif not on_gpu or peak is None:
            status, note = "n/a", "not on a GPU" if not on_gpu else _reason(run)
        else:
            status, note = ("PASS" if peak <= limit else "MISS"), ""
        rows.append({"target": f"peak reserved GPU memory, {shape}, {backend}", "value": peak,
                     "limit": f"<= {limit:g} GB", "status": status, "note": note})
    for shape in dict.fromkeys(r["shape"] for r in results["runs"]):
        hf, un = runs.get((shape, "hf")), runs.get((shape, "unsloth"))
        if not (hf and un):
            continue
        h, u = (hf.get("summary") or {}).get("step_s"), (un.get("summary") or {}).get("step_s")
        ratio = h / u if h and u else None
        if not on_gpu or ratio is None:
            status, note = "n/a", "not on a GPU" if not on_gpu else f"hf {hf.get('status')}, unsloth {un.get('status')}"
        else:
            status, note = ("PASS" if ratio >= TARGET_SPEEDUP else "MISS"), ""
        rows.append({"target": f"speed-up per step, {shape}, unsloth vs hf", "value": ratio,
                     "limit": f">= {TARGET_SPEEDUP:g}x", "status": status, "note": note})
    return rows


def run_notes(results: dict) -> list[str]:
    """What a reader of the bench numbers must know about a run that did not go as designed."""
    notes = []
    for r in results["runs"]:
        if r.get("status") != "ok":
            continue
        tag = f"{r['shape']}/{r['backend']}"
        if not r.get("forced_lengths_ok", True):
            notes.append(f"{tag}: completions were not all exactly {results['settings']['completion_len']} tokens.")
        if r.get("micro_batches") and not r.get("mixed_micro_batches"):
            notes.append(f"{tag}: no micro-batch mixed prompt lengths (all left padding alike).")
    return notes


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def _status(run: dict) -> str:
    return run.get("status", "?") if run.get("status") == "ok" else f"{run.get('status')}: {_reason(run)[:120]}"


def _settings(s: dict) -> str:
    prompts = f"{s['prompts']} x {s['generations']} sequences, prompts of {max(1, s['prompt_len'] // 2)} to {s['prompt_len']} tokens"
    if s["mode"] == "verify-loss":
        return f"{prompts}, completions of about {s['completion_len'] // 2} to {s['completion_len']} tokens, one micro-batch"
    return (f"{prompts}, completions of exactly {s['completion_len']} tokens, gradient accumulation {s['grad_accum']}, "
            f"{s['steps']} step(s) (the first {s['warmup_steps']} left out of the medians)")


def markdown(results: dict) -> str:
    s, dev = results["settings"], results["device"]
    title = {"verify-loss": "DeGRPO loss check (--verify-loss)", "load": "imports, load and control rows (--load-only)"}.get(
        s["mode"], "DeGRPO step benchmark")
    device = dev.get("name") or s["device"]
    if dev.get("total_memory_gb"):
        device += f" ({dev['total_memory_gb']} GB, compute capability {dev.get('capability')})"
    lines = [f"# gpu_step: {title}", "", f"- date: {results['created']}", f"- device: {device}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v),
             f"- settings: {_settings(s)}, recipe {s['config']}", ""]
    if s["mode"] == "bench":
        lines += [("| shape | backend | status | peak reserved GB | peak allocated GB | load peak reserved GB | "
                   "peak RSS GB | load s | generation s | rollout s | update s | step s | gen tok/s | update tok/s |"),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["runs"]:
            sm, pk, ld = r.get("summary") or {}, r.get("peak") or {}, r.get("load_memory") or {}
            lines.append(" | ".join([f"| {r['shape']}", r["backend"], _status(r), _fmt(pk.get("peak_reserved_gb"), 2),
                                     _fmt(pk.get("peak_allocated_gb"), 2), _fmt(ld.get("peak_reserved_gb"), 2),
                                     _fmt(pk.get("peak_rss_gb"), 2), _fmt(r.get("load_s"), 1),
                                     _fmt(sm.get("generate_s"), 2), _fmt(sm.get("rollout_s"), 2),
                                     _fmt(sm.get("update_s"), 2), _fmt(sm.get("step_s"), 2),
                                     _fmt(sm.get("generation_tokens_per_s"), 1),
                                     _fmt(sm.get("update_tokens_per_s"), 1)]) + " |")
        lines += ["", "| target | measured | limit | result | note |", "|---|---|---|---|---|"]
        lines += [f"| {t['target']} | {_fmt(t['value'], 2)} | {t['limit']} | {t['status']} | {t['note']} |"
                  for t in results["targets"]]
        notes = run_notes(results)
        lines += ["", "Notes:", "", *[f"- {n}" for n in notes]] if notes else []
    elif s["mode"] == "load":
        lines += ["| shape | backend | status | load s | trainable parameters | control-row tensors |", "|---|---|---|---|---|---|"]
        for r in results["runs"]:
            rows = (r.get("control_rows") or {}).get("tensors") or {}
            lines.append(f"| {r['shape']} | {r['backend']} | {_status(r)} | {_fmt(r.get('load_s'), 1)} | "
                         f"{_fmt(r.get('trainable_parameters'))} | {len(rows)} |")
        lines += ["", "| check | result | note |", "|---|---|---|"]
        lines += [f"| {c['check']} | {c['status']} | {c['note']} |" for c in results["checks"]]
    else:
        lines += [("| shape | backend | status | loss | closed form (B, T) | (B,) would give | loss with (B,) | "
                   "vs hf: cosine | vs hf: rel L2 |"), "|---|---|---|---|---|---|---|---|---|"]
        for r in results["runs"]:
            cmp = r.get("vs_hf") or {}
            lines.append(" | ".join([f"| {r['shape']}", r["backend"], _status(r), _fmt(r.get("loss"), 6),
                                     _fmt(r.get("expected_loss_bt"), 6), _fmt(r.get("expected_loss_if_per_sequence"), 6),
                                     _fmt(r.get("loss_with_per_sequence_advantages"), 6), _fmt(cmp.get("cosine"), 6),
                                     _fmt(cmp.get("rel_l2"), 4)]) + " |")
        lines += ["", "| check | result | note |", "|---|---|---|"]
        lines += [f"| {c['check']} | {c['status']} | {c['note']} |" for c in results["checks"]]
    lines += ["", *summary_lines(results)]
    if s["device"] != "cuda":
        lines += ["", f"Run on {s['device']}: GPU memory and speed are not assessed. {NOT_MEASURED}"]
    return "\n".join(lines) + "\n"


# Spec-sheet figures of the cards a run may be lent (the name torch reports contains the key; most specific first):
# memory bandwidth (GB/s) scales the decode part of a step to a T4, dense fp16/bf16 tensor peak (TFLOP/s) the update.
CARDS = {"H200": (4800.0, 989.0), "H100 PCIe": (2000.0, 756.0), "H100": (3350.0, 989.0), "A100-SXM4-80GB": (2039.0, 312.0),
         "A100": (1555.0, 312.0), "L4": (300.0, 121.0), "T4": (320.0, 65.0)}
T4_CARD = CARDS["T4"]


def card_figures(name: str | None) -> tuple[float, float] | None:
    """(bandwidth GB/s, fp16 TFLOP/s) of the card torch named, None for one not listed."""
    return next((figures for key, figures in CARDS.items() if name and key in name), None)


def projection_lines(results: dict) -> list[str]:
    """Each timed run's DeGRPO stage at the recipe's step count on the lent card, and on a T4: the generation part
    scaled by the bandwidth ratio (decoding reads every weight once a step), the update by the fp16 peak ratio.
    Estimates from one short run (the steps after the first), not a T4 measurement."""
    settings, device = results.get("settings") or {}, (results.get("device") or {}).get("name")
    steps = settings.get("rl_max_steps")
    figures = card_figures(device)
    lines = []
    for r in results.get("runs", []):
        sm = r.get("summary") or {}
        if r.get("status") != "ok" or not sm.get("step_s") or not steps:
            continue
        here = sm["step_s"] * steps / 60
        line = (f"PROJECTION {r['shape']}/{r['backend']}: {sm['step_s']:.1f} s a step x {steps} steps = {here:.0f} min "
                f"of DeGRPO on {device}")
        if figures and sm.get("generate_s") is not None and sm.get("update_s") is not None:
            t4_step = (sm["generate_s"] * figures[0] / T4_CARD[0] + (sm["step_s"] - sm["generate_s"])
                       * figures[1] / T4_CARD[1])
            line += (f"; on a T4 ~{t4_step:.0f} s a step, ~{t4_step * steps / 60:.0f} min (generation x "
                     f"{figures[0] / T4_CARD[0]:.1f} by bandwidth, the rest x {figures[1] / T4_CARD[1]:.1f} by fp16 peak; "
                     "docs/gpu.md's cost model estimates ~57 s a step)")
        else:
            line += "; no T4 projection (a card not in benchmarks/gpu/report.CARDS)"
        lines.append(line)
    return lines


def summary_lines(results: dict) -> list[str]:
    """The few lines worth reading first: the loss check's verdict, or each run's memory and time."""
    if results["settings"]["mode"] in ("verify-loss", "load"):
        failed = [c["check"] for c in results["checks"] if c["status"] == "FAIL"]
        passed = sum(c["status"] == "PASS" for c in results["checks"])
        what = "LOSS CHECK" if results["settings"]["mode"] == "verify-loss" else "LOAD CHECK"
        line = f"{what}: {results['verdict']} ({passed} passed, {len(failed)} failed)"
        return [line] + [f"  FAIL {name}" for name in failed]
    lines = []
    for r in results["runs"]:
        sm, pk = r.get("summary") or {}, r.get("peak") or {}
        if r.get("status") != "ok":
            lines.append(f"BENCH {r['shape']}/{r['backend']}: {_status(r)}")
            continue
        memory = pk.get("peak_reserved_gb", pk.get("peak_rss_gb"))
        kind = "GPU reserved" if "peak_reserved_gb" in pk else "RSS"
        lines.append(f"BENCH {r['shape']}/{r['backend']}: peak {kind} {_fmt(memory, 2)} GB, step {_fmt(sm.get('step_s'), 2)} s "
                     f"(generation {_fmt(sm.get('generate_s'), 2)} s, update {_fmt(sm.get('update_s'), 2)} s), "
                     f"{_fmt(sm.get('generation_tokens_per_s'), 1)} generated tok/s")
    lines += [f"TARGET {t['target']}: {t['status']} ({_fmt(t['value'], 2)}, {t['limit']})" for t in results["targets"]]
    return lines + projection_lines(results)


def merge(parts: list[tuple[str, str]], json_out: Path, md_out: Path, notes: list[str] | None = None) -> dict:
    """One JSON summary and one Markdown file from the parts' result files, in part order; a part whose file
    is missing (it was cut, or never started) is listed as such. Rewritten after every part, so an earlier
    part's result is in $OUT whatever happens to a later one."""
    summary: dict = {"parts": [], "notes": notes or []}
    sections = ["# GPU check (scripts/gpu_check.sh)", ""]
    for label, path in parts:
        file = Path(path)
        if not file.exists():
            summary["parts"].append({"part": label, "status": "not written (cut by its deadline, or not reached)"})
            sections += [f"## {label}", "", "not written (cut by its deadline, or not reached)", ""]
            continue
        results = json.loads(file.read_text())
        part = {"part": label, "summary": summary_lines(results), **results}
        summary["parts"].append(part)
        body = markdown(results).replace("\n# gpu_step: ", "\n### ").removeprefix("# gpu_step: ")
        sections += [f"## {label}: {body}", ""]
    sections += [f"- {n}" for n in summary["notes"]]
    json_out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    md_out.write_text("\n".join(sections) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--merge"]:  # --merge OUT.json OUT.md LABEL=FILE ...
        merge([tuple(a.split("=", 1)) for a in argv[3:]], Path(argv[1]), Path(argv[2]))
        argv = [a.split("=", 1)[1] for a in argv[3:]]
    for path in argv:
        file = Path(path)
        if not file.exists():
            print(f"{path}: not written (the run did not get that far)")
            continue
        print(f"{path}:")
        print("\n".join(f"  {line}" for line in summary_lines(json.loads(file.read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
