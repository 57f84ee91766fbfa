"""Plots and a Markdown summary of a run, from its DLLogger files.

    python demo_bert.py report RUN_DIR [--output_dir DIR]

RUN_DIR is a pre-training output dir (``results/dllogger.json``), a fine-tuning output dir
(``<task>/dllogger.json``), a folder holding several of them (the quick start's run dir), or one
DLLogger file. Every ``dllogger.json`` below it is read. Written to ``RUN_DIR/report`` by default:

    pretraining_phase<N>.png   loss (step_loss, average_loss) and learning rate against step
    throughput.png             sequences/s against step, one line per phase / task
    finetuning_<task>.png      fine-tuning loss against step and the evaluation metrics
    summary.md                 configuration, final metrics, sequences/s and wall time per phase / task
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from central.dllog import PREFIX, read_dllogger
from central.errors import BadInputError, run_main

# Series names by role (the reference's metric names plus what HF-style fine-tuning logs).
LR_NAMES = ("learning_rate", "lr")
THROUGHPUT_HINTS = ("per_second", "perf_per_step", "throughput")
NOT_METRICS = ("epoch", "step", "global_step", "total_flos") + LR_NAMES
# Keys only pre-training logs carry (fine-tuning logs also have average_loss / final_loss).
PRETRAINING_MARKERS = ("step_loss", "average_perf_per_step", "batch_size_per_pu", "average_training_time_step")


class ReportInputError(BadInputError):
    """RUN_DIR is missing, holds no DLLogger file, or a file is not DLLogger JSON lines."""


@dataclass
class Segment:
    """One phase of pre-training or one fine-tuning task: its parameters and metric series."""
    name: str
    kind: str  # "pretraining" | "finetuning"
    source: Path
    parameters: Dict[str, object] = field(default_factory=dict)
    series: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)  # name -> [(step, value)]
    finals: Dict[str, float] = field(default_factory=dict)  # values logged with an empty step
    first_time: Optional[float] = None
    last_time: Optional[float] = None

    def add(self, record: dict) -> None:
        stamp = record.get("timestamp")
        if isinstance(stamp, (int, float)):
            self.first_time = stamp if self.first_time is None else min(self.first_time, stamp)
            self.last_time = stamp if self.last_time is None else max(self.last_time, stamp)
        step, data = record.get("step"), record.get("data") or {}
        if step == "PARAMETER":
            self.parameters.update(data)
            return
        numbers = dict(flatten_numbers(data))
        if isinstance(step, list) and step:
            x = int(step[-1]) if isinstance(step[-1], (int, float)) else len(next(iter(self.series.values()), []))
            for name, value in numbers.items():
                self.series.setdefault(name, []).append((x, value))
        else:
            self.finals.update(numbers)

    def last(self, name: str) -> Optional[float]:
        if name in self.finals:
            return self.finals[name]
        points = self.series.get(name)
        return points[-1][1] if points else None

    def wall_time(self) -> Optional[float]:
        for name in ("e2e_train_time", "train_runtime", "wall_time"):
            if self.last(name) is not None:
                return self.last(name)
        if self.first_time is not None and self.last_time is not None:
            return self.last_time - self.first_time
        return None


def flatten_numbers(data: dict, prefix: str = ""):
    """(name, float) for every finite number in ``data``; nested dicts give ``outer.inner`` names."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flatten_numbers(value, prefix=f"{name}.")
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)) and math.isfinite(value):
            yield name, float(value)


def load_records(path: Path) -> List[dict]:
    """DLLogger records of ``path``; a torn last line (a run killed mid-write) is dropped, other damage is an error."""
    try:
        return read_dllogger(path)
    except ValueError:
        pass
    except OSError as err:
        raise ReportInputError(f"{path}: cannot be read ({err.strerror or err})") from err
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line.startswith(PREFIX):
            continue
        try:
            records.append(json.loads(line[len(PREFIX):]))
        except ValueError as err:
            if number == len(lines):
                break
            raise ReportInputError(f"{path}: line {number} is not a DLLogger JSON record") from err
    return records


def is_pretraining(records: Sequence[dict]) -> bool:
    return any(key in PRETRAINING_MARKERS for r in records for key in (r.get("data") or {}))


def split_phases(path: Path, records: Sequence[dict]) -> List[Segment]:
    """Pre-training logs append both phases to one file: a new phase starts where PARAMETER records
    follow step records, or where the step counter goes back down (phase 2 counts from 0 again)."""
    groups: List[List[dict]] = [[]]
    seen_steps, last_step = False, None
    for record in records:
        step = record.get("step")
        if step == "PARAMETER":
            if seen_steps:
                groups.append([])
                seen_steps, last_step = False, None
        elif isinstance(step, list) and step and isinstance(step[-1], (int, float)):
            if last_step is not None and step[-1] < last_step:
                groups.append([])
            seen_steps, last_step = True, step[-1]
        groups[-1].append(record)
    segments = []
    for number, group in enumerate([g for g in groups if g], 1):
        segment = Segment(name=f"phase {number}", kind="pretraining", source=path)
        for record in group:
            segment.add(record)
        phase = segment.parameters.get("phase")
        if isinstance(phase, (int, str)) and str(phase).strip():
            segment.name = f"phase {phase}"
        segments.append(segment)
    return segments


def finetuning_segment(path: Path, records: Sequence[dict]) -> Segment:
    task = path.parent.name
    segment = Segment(name=task, kind="finetuning", source=path)
    for record in records:
        segment.add(record)
    eval_file = path.parent / "eval_results.json"
    if eval_file.is_file():
        try:
            segment.finals.update(dict(flatten_numbers(json.loads(eval_file.read_text(encoding="utf-8")))))
        except ValueError:
            pass  # the DLLogger file is the source; a broken side file only loses the extra numbers
    return segment


def collect(run_dir: Path) -> List[Segment]:
    if not run_dir.exists():
        raise ReportInputError(f"{run_dir}: no such file or directory")
    if run_dir.is_file():
        files = [run_dir]
    else:
        files = sorted(p for p in run_dir.rglob("dllogger*.json") if "report" not in p.relative_to(run_dir).parts)
    if not files:
        raise ReportInputError(f"{run_dir}: holds no dllogger.json (expected results/dllogger.json "
                               f"or <task>/dllogger.json)")
    segments: List[Segment] = []
    for path in files:
        records = load_records(path)
        if not records:
            continue
        segments.extend(split_phases(path, records) if is_pretraining(records) else [finetuning_segment(path, records)])
    if not segments:
        raise ReportInputError(f"{run_dir}: its DLLogger files hold no records")
    return sorted(segments, key=lambda s: s.kind != "pretraining")  # stable: pre-training phases first


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def names_with(segment: Segment, hints: Sequence[str]) -> List[str]:
    return [n for n in segment.series if any(h in n for h in hints)]


def metric_names(segment: Segment, include_finals: bool = True) -> List[str]:
    names = list(segment.series) + (list(segment.finals) if include_finals else [])
    out = []
    for name in names:
        leaf = name.rsplit(".", 1)[-1]
        if name in out or leaf in NOT_METRICS or "loss" in leaf or "time" in leaf or "runtime" in leaf:
            continue
        if any(h in leaf for h in THROUGHPUT_HINTS) or leaf.endswith("_per_step") or leaf.startswith("num_"):
            continue
        out.append(name)
    return out


def save_figure(fig, path: Path) -> Path:
    from central.checkpoint import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_series(axis, segment: Segment, names: Sequence[str], ylabel: str) -> bool:
    drawn = False
    for name in names:
        points = segment.series.get(name) or []
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], label=name, linewidth=1.2)
            drawn = True
    axis.set_xlabel("step")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if drawn:
        axis.legend(fontsize=8)
    return drawn


def plot_pretraining(segment: Segment, out_dir: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    loss_names = [n for n in ("step_loss", "average_loss") if n in segment.series] or names_with(segment, ("loss",))
    lr_names = [n for n in LR_NAMES if n in segment.series]
    if not loss_names and not lr_names:
        return None
    fig, (loss_axis, lr_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    plot_series(loss_axis, segment, loss_names, "loss")
    plot_series(lr_axis, segment, lr_names, "learning rate")
    loss_axis.set_title(f"pre-training {segment.name}: loss")
    lr_axis.set_title(f"pre-training {segment.name}: learning rate")
    fig.tight_layout()
    return save_figure(fig, out_dir / f"pretraining_{segment.name.replace(' ', '')}.png")


def plot_throughput(segments: Sequence[Segment], out_dir: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    lines = [(s, n) for s in segments for n in names_with(s, THROUGHPUT_HINTS)]
    if not lines:
        return None
    fig, axis = plt.subplots(figsize=(7, 3.6))
    for segment, name in lines:
        points = segment.series[name]
        axis.plot([p[0] for p in points], [p[1] for p in points], label=f"{segment.name}: {name}", linewidth=1.2)
    axis.set_xlabel("step")
    axis.set_ylabel("sequences / s")
    axis.set_title("throughput")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_dir / "throughput.png")


def plot_finetuning(segment: Segment, out_dir: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt

    loss_names = names_with(segment, ("loss",))
    curves = [n for n in metric_names(segment, include_finals=False) if len(segment.series[n]) > 1]
    bars = {n: segment.last(n) for n in metric_names(segment) if n not in curves}
    if not loss_names and not curves and not bars:
        return None
    fig, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    plot_series(loss_axis, segment, loss_names, "loss")
    loss_axis.set_title(f"{segment.name}: training loss")
    if curves:
        plot_series(metric_axis, segment, curves, "metric")
    if bars:
        names = list(bars)
        metric_axis.bar(range(len(names)), [bars[n] for n in names], color="tab:green")
        metric_axis.set_xticks(range(len(names)))
        metric_axis.set_xticklabels([n.rsplit(".", 1)[-1] for n in names], rotation=30, fontsize=8)
        for i, name in enumerate(names):
            metric_axis.annotate(f"{bars[name]:.3g}", (i, bars[name]), ha="center", va="bottom", fontsize=8)
    metric_axis.set_title(f"{segment.name}: evaluation")
    fig.tight_layout()
    return save_figure(fig, out_dir / f"finetuning_{segment.name}.png")


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 90 else text[:87] + "..."


def segment_summary(segment: Segment) -> List[str]:
    lines = [f"### {'Pre-training ' if segment.kind == 'pretraining' else 'Fine-tuning: '}{segment.name}", "",
             f"Log: `{segment.source}`", ""]
    if segment.parameters:
        lines += ["| parameter | value |", "|---|---|"]
        for key, value in segment.parameters.items():
            # A dict (pre-training logs all its arguments as Config) gets one row per entry.
            # Entries that are None or False (options left unset) are left out to keep the table short.
            items = ([(f"{key}.{k}", v) for k, v in value.items() if v is not None and v is not False]
                     if isinstance(value, dict) else [(key, value)])
            lines += [f"| {k} | {fmt(v).replace('|', '/')} |" for k, v in items]
        lines.append("")
    results = []
    steps = [p[0] for points in segment.series.values() for p in points]
    if steps:
        results.append(("steps logged", f"{min(steps)} .. {max(steps)}"))
    for name in ("final_loss", "step_loss", "average_loss", "loss", "train_loss", "eval_loss"):
        if segment.last(name) is not None:
            results.append((f"{name} (last)" if name not in segment.finals else name, fmt(segment.last(name))))
    for name in metric_names(segment):
        results.append((name, fmt(segment.last(name))))
    throughput = [n for n in list(segment.finals) + list(segment.series) if any(h in n for h in THROUGHPUT_HINTS)]
    for name in dict.fromkeys(throughput):
        if name in segment.series and name not in segment.finals:
            values = [v for _, v in segment.series[name]]
            results.append((f"{name} (mean of {len(values)})", fmt(sum(values) / len(values))))
        else:
            results.append((name, fmt(segment.last(name))))
    wall = segment.wall_time()
    if wall is not None:
        results.append(("wall time (s)", fmt(float(wall))))
    lines += ["| result | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in results] + [""]
    return lines


def write_summary(run_dir: Path, segments: Sequence[Segment], plots: Sequence[Path], out_dir: Path) -> Path:
    from central.checkpoint import atomic_write_text

    lines = [f"# Run report: {run_dir}", ""]
    overview = [("pre-training phases", sum(s.kind == "pretraining" for s in segments)),
                ("fine-tuning tasks", ", ".join(s.name for s in segments if s.kind == "finetuning") or "none")]
    lines += [f"- {k}: {v}" for k, v in overview] + [""]
    for segment in segments:
        lines += segment_summary(segment)
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return atomic_write_text(out_dir / "summary.md", "\n".join(lines))


def build_report(run_dir: Path, out_dir: Optional[Path] = None) -> List[Path]:
    """Write the plots and summary.md; returns the written paths (summary last)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    segments = collect(run_dir)
    out_dir = out_dir or ((run_dir.parent if run_dir.is_file() else run_dir) / "report")
    plots = [plot_pretraining(s, out_dir) for s in segments if s.kind == "pretraining"]
    plots.append(plot_throughput(segments, out_dir))
    plots += [plot_finetuning(s, out_dir) for s in segments if s.kind == "finetuning"]
    plots = [p for p in plots if p is not None]
    return plots + [write_summary(run_dir, segments, plots, out_dir)]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="demo_bert.py report",
                                     description="Plots and a Markdown summary of a pre-training / fine-tuning run.")
    parser.add_argument("run_dir", help="run output folder (or one dllogger.json)")
    parser.add_argument("--output_dir", default=None, help="where to write (default: RUN_DIR/report)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    def write(_argv) -> int:
        for path in build_report(Path(args.run_dir), Path(args.output_dir) if args.output_dir else None):
            print(f"wrote {path}")
        return 0

    return run_main(write, argv, debug=args.debug)  # bad input exits 2, a report that cannot be written 1


if __name__ == "__main__":
    sys.exit(main())
