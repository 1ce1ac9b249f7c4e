"""Medians over rounds, the comparison table with its targets, and the Markdown and JSON reports."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: Measurements by figure, then by system or worker label: one dict of values per round.
Results = dict[str, dict[str, list[dict[str, Any]]]]


@dataclass(frozen=True)
class Target:
    """A bound on the nbqueue/baseline ratio (``on="ratio"``) or on nbqueue's own value (``on="value"``)."""

    on: str
    bound: float
    at_least: bool
    strict: bool = False

    def passed(self, value: float, ratio: float | None) -> bool | None:
        measured = ratio if self.on == "ratio" else value
        if measured is None:
            return None
        if self.at_least:
            return measured > self.bound if self.strict else measured >= self.bound
        return measured < self.bound if self.strict else measured <= self.bound

    def __str__(self) -> str:
        if self.at_least:
            sign = ">" if self.strict else "≥"
        else:
            sign = "<" if self.strict else "≤"
        suffix = "x" if self.on == "ratio" else ""
        return f"{sign} {self.bound:g}{suffix}"


@dataclass(frozen=True)
class Row:
    """One line of the comparison table: an nbqueue median against a baseline median."""

    figure: str
    nbqueue: float | None
    baseline_label: str
    baseline: float | None
    target: Target | None = None
    missing: str = "n/a"

    @property
    def ratio(self) -> float | None:
        if self.nbqueue is None or not self.baseline:
            return None
        return self.nbqueue / self.baseline

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.nbqueue is None:
            return self.missing
        passed = self.target.passed(self.nbqueue, self.ratio)
        return "pass" if passed else "FAIL"


def medians(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    """Return the median over rounds of every numeric value, by figure and label."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for figure, by_label in results.items():
        for label, rounds in by_label.items():
            names = [
                name
                for name in dict.fromkeys(name for r in rounds for name in r)
                if all(isinstance(r.get(name, 0), (int, float)) and not isinstance(r.get(name), bool) for r in rounds)
            ]
            summary.setdefault(figure, {})[label] = {
                name: statistics.median(r[name] for r in rounds if name in r) for name in names
            }
    return summary


def _get(summary: dict[str, Any], figure: str, label: str, name: str) -> float | None:
    return summary.get(figure, {}).get(label, {}).get(name)


def comparison_rows(summary: dict[str, Any], payload_bytes: int) -> list[Row]:
    """Build the comparison table from the medians, with the targets nbqueue is measured against."""
    def value(figure: str, label: str, name: str) -> float | None:
        return _get(summary, figure, label, name)

    payload_mb = payload_bytes / 1e6
    # The refresh figure ran but found no refresher, or it was not run at all (--only).
    refresh_missing = "not available" if "refresh" in summary else "n/a"
    nbqueue_memory = value("payload", "nbqueue", "peak_memory_bytes")
    rows = [
        Row("Throughput, jobs/s (burst, concurrency 1)", value("throughput", "nbqueue", "jobs_per_s"),
            "RQ Worker", value("throughput", "RQ Worker", "jobs_per_s"), Target("ratio", 40, at_least=True)),
        Row("Throughput, jobs/s (burst, concurrency 1)", value("throughput", "nbqueue", "jobs_per_s"),
            "RQ SimpleWorker", value("throughput", "RQ SimpleWorker", "jobs_per_s"), Target("ratio", 10, at_least=True)),
        Row("Throughput, jobs/s (burst, concurrency 2)", value("throughput", "nbqueue -c 2", "jobs_per_s"),
            "RQ Worker", value("throughput", "RQ Worker", "jobs_per_s")),
        Row("Throughput to the last job's end, jobs/s (concurrency 1)", value("throughput", "nbqueue", "jobs_per_s_to_last_job"),
            "RQ Worker", value("throughput", "RQ Worker", "jobs_per_s_to_last_job")),
        Row("Throughput to the last job's end, jobs/s (concurrency 1)", value("throughput", "nbqueue", "jobs_per_s_to_last_job"),
            "RQ SimpleWorker", value("throughput", "RQ SimpleWorker", "jobs_per_s_to_last_job")),
        Row("Burst drain time, s (concurrency 1)", value("throughput", "nbqueue", "seconds"),
            "RQ SimpleWorker", value("throughput", "RQ SimpleWorker", "seconds")),
        Row("Redis commands per job, execution", value("commands", "nbqueue", "execution_per_job"),
            "RQ Worker", value("commands", "RQ Worker", "execution_per_job"), Target("value", 6, at_least=False)),
        Row("Redis commands per job, execution", value("commands", "nbqueue", "execution_per_job"),
            "RQ SimpleWorker", value("commands", "RQ SimpleWorker", "execution_per_job")),
        Row("Redis commands per job, execution, sent by clients", value("commands", "nbqueue", "execution_sent_per_job"),
            "RQ Worker", value("commands", "RQ Worker", "execution_sent_per_job")),
        Row("Redis commands per job, enqueue", value("commands", "nbqueue", "enqueue_per_job"),
            "RQ", value("commands", "RQ Worker", "enqueue_per_job"), Target("value", 2, at_least=False)),
        Row("Latency median, ms (idle worker)", value("latency", "nbqueue", "median_ms"),
            "RQ SimpleWorker", value("latency", "RQ SimpleWorker", "median_ms"), Target("ratio", 0.25, at_least=False)),
        Row("Latency median, ms (idle worker)", value("latency", "nbqueue", "median_ms"),
            "RQ Worker", value("latency", "RQ Worker", "median_ms")),
        Row("Latency p99, ms (idle worker)", value("latency", "nbqueue", "p99_ms"),
            "RQ SimpleWorker", value("latency", "RQ SimpleWorker", "p99_ms")),
        Row("Latency p99, ms (idle worker)", value("latency", "nbqueue", "p99_ms"),
            "RQ Worker", value("latency", "RQ Worker", "p99_ms")),
        Row("Single enqueue, jobs/s", value("enqueue", "nbqueue", "single_per_s"),
            "RQ single enqueue", value("enqueue", "RQ", "single_per_s"), Target("ratio", 2, at_least=True)),
        Row("enqueue_many, jobs/s", value("enqueue", "nbqueue", "many_per_s"),
            "RQ single enqueue", value("enqueue", "RQ", "single_per_s"), Target("ratio", 20, at_least=True)),
        Row("enqueue_many, jobs/s", value("enqueue", "nbqueue", "many_per_s"),
            "RQ enqueue_many", value("enqueue", "RQ", "many_per_s")),
        Row(f"{payload_mb:g} MB round trip, s", value("payload", "nbqueue", "seconds"),
            "plain SET+GET", value("payload", "plain SET+GET", "seconds"), Target("ratio", 2.5, at_least=False)),
        Row(f"{payload_mb:g} MB round trip, s", value("payload", "nbqueue", "seconds"),
            "RQ Worker", value("payload", "RQ Worker", "seconds")),
        Row(f"{payload_mb:g} MB round trip, s", value("payload", "nbqueue", "seconds"),
            "RQ SimpleWorker", value("payload", "RQ SimpleWorker", "seconds")),
        Row(f"Worker peak memory, MB ({payload_mb:g} MB payload)", _mb(nbqueue_memory),
            "payload size", payload_mb, Target("ratio", 4, at_least=False, strict=True)),
        Row(f"Worker peak memory, MB ({payload_mb:g} MB payload)", _mb(nbqueue_memory),
            "RQ Worker", _mb(value("payload", "RQ Worker", "peak_memory_bytes"))),
        Row(f"Worker peak memory, MB ({payload_mb:g} MB payload)", _mb(nbqueue_memory),
            "RQ SimpleWorker", _mb(value("payload", "RQ SimpleWorker", "peak_memory_bytes"))),
        Row("Refresh of 1,000 unchanged widgets, round trips", value("refresh", "nbqueue", "unchanged_round_trips"),
            "none (RQ has no widgets)", None, Target("value", 1, at_least=False), missing=refresh_missing),
        Row("Refresh of 1,000 unchanged widgets, CPU ms", value("refresh", "nbqueue", "unchanged_cpu_ms"),
            "none (RQ has no widgets)", None, Target("value", 50, at_least=False, strict=True), missing=refresh_missing),
        Row("Refresh of 1,000 widgets whose jobs finished, round trips", value("refresh", "nbqueue", "changed_round_trips"),
            "none (RQ has no widgets)", None, Target("value", 1, at_least=False), missing=refresh_missing),
        Row("Refresh of 1,000 widgets whose jobs finished, CPU ms", value("refresh", "nbqueue", "changed_cpu_ms"),
            "none (RQ has no widgets)", None, Target("value", 50, at_least=False, strict=True), missing=refresh_missing),
        Row("Idle worker, Redis commands/s", value("idle", "nbqueue", "commands_per_s"),
            "RQ Worker", value("idle", "RQ Worker", "commands_per_s"), Target("value", 1, at_least=False)),
    ]
    return rows


def _mb(value: float | None) -> float | None:
    return None if value is None else value / 1e6


def format_number(value: float | None, missing: str = "n/a") -> str:
    """Format a figure with about three significant digits and thousands separators."""
    if value is None:
        return missing
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _table(header: list[str], lines: list[list[str]]) -> str:
    rows = [header, ["---"] * len(header), *lines]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


def machine_info(redis_version: str, redis_binary: str) -> dict[str, str]:
    """Describe the machine and the versions of the software measured."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def package_version(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": f"{redis_version} ({redis_binary})",
        "nbqueue": package_version("nbqueue"),
        "rq": package_version("rq"),
        "redis_py": package_version("redis"),
        "cloudpickle": package_version("cloudpickle"),
        "nbqueue_source": _source_state(),
    }


def _source_state() -> str:
    """Describe the commit of the measured nbqueue sources and whether nbqueue/ has uncommitted changes."""
    repository = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repository), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repository), "status", "--porcelain", "--", "nbqueue"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (f" with uncommitted changes in {len(changed)} files under nbqueue/" if changed else "")


def render_markdown(report: dict[str, Any]) -> str:
    """Render the report as Markdown: settings, the comparison table, all medians and command breakdowns."""
    machine, settings = report["machine"], report["settings"]
    lines = [
        f"Run of {report['finished_at']} with `{report['command']}`: {settings['rounds']} round(s), "
        f"{settings['throughput_jobs']:,} jobs per throughput run, {settings['command_jobs']:,} per command count, "
        f"{settings['latency_jobs']:,} latency samples, {settings['enqueue_jobs']:,} enqueues, "
        f"a {settings['payload_bytes'] / 1e6:g} MB payload, {settings['idle_seconds']:g} s of idle worker.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}; Python {machine['python']}, "
        f"redis-server {machine['redis_server']}, nbqueue {machine['nbqueue']}, RQ {machine['rq']}, "
        f"redis-py {machine['redis_py']}, cloudpickle {machine['cloudpickle']}. nbqueue source: {machine['nbqueue_source']}.",
        "",
        "Medians over the rounds. The ratio divides nbqueue's figure by the compared one.",
        "",
    ]
    table_lines = []
    for row in report["rows"]:
        table_lines.append([
            row["figure"],
            format_number(row["nbqueue"], row["missing"]),
            row["baseline_label"],
            format_number(row["baseline"], "–"),
            "–" if row["ratio"] is None else f"{row['ratio']:.3g}x",
            row["target"] or "",
            row["verdict"],
        ])
    lines.append(_table(["Figure", "nbqueue", "Compared with", "Its value", "nbqueue / it", "Target", "Result"], table_lines))

    lines += ["", "All medians, with the value of each round:", ""]
    median_lines = []
    for figure, by_label in report["medians"].items():
        for label, values in by_label.items():
            for name, median in values.items():
                per_round = [r.get(name) for r in report["raw"][figure][label]]
                rounds_text = ", ".join(format_number(v) for v in per_round)
                median_lines.append([figure, label, name, format_number(median), rounds_text])
    lines.append(_table(["Figure", "Worker or client", "Measurement", "Median", "Rounds"], median_lines))

    notes = []
    for figure, by_label in report["raw"].items():
        for label, rounds in by_label.items():
            for key in ("error", "reason"):
                if key in rounds[-1]:
                    notes.append(f"- {figure}, {label}: {rounds[-1][key]}")
    if notes:
        lines += ["", "Figures not measured:", "", *notes]

    lines += ["", "Redis commands per job by command, in the last round (commands that scripts run included):", ""]
    breakdown_lines = []
    for label, rounds in report["raw"].get("commands", {}).items():
        for phase in ("enqueue", "execution"):
            calls = rounds[-1][f"{phase}_breakdown"]
            text = ", ".join(f"{name} {count:.3g}" for name, count in list(calls.items())[:12])
            breakdown_lines.append([label, phase, text])
    lines.append(_table(["Worker", "Phase", "Commands per job (the 12 most frequent)"], breakdown_lines))

    lines += ["", "Idle worker commands per second by command, in the last round:", ""]
    idle_lines = []
    for label, rounds in report["raw"].get("idle", {}).items():
        calls = rounds[-1]["breakdown_per_s"]
        idle_lines.append([label, ", ".join(f"{name} {rate:.3g}" for name, rate in calls.items()) or "none"])
    lines.append(_table(["Worker", "Commands per second"], idle_lines))
    return "\n".join(lines) + "\n"


def render_text(report: dict[str, Any]) -> str:
    """Render the comparison table as aligned plain text for the terminal."""
    header = ["Figure", "nbqueue", "Compared with", "Its value", "Ratio", "Target", "Result"]
    lines = [header]
    for row in report["rows"]:
        lines.append([
            row["figure"], format_number(row["nbqueue"], row["missing"]), row["baseline_label"],
            format_number(row["baseline"], "–"), "–" if row["ratio"] is None else f"{row['ratio']:.3g}x",
            row["target"] or "", row["verdict"],
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def build_report(results: Results, settings: dict[str, Any], machine: dict[str, str], command: str, finished_at: str) -> dict[str, Any]:
    """Assemble everything the Markdown and JSON files contain."""
    summary = medians(results)
    rows = comparison_rows(summary, settings["payload_bytes"])
    return {
        "command": command,
        "finished_at": finished_at,
        "machine": machine,
        "settings": settings,
        "rows": [
            {
                "figure": row.figure, "nbqueue": row.nbqueue, "baseline_label": row.baseline_label,
                "baseline": row.baseline, "ratio": row.ratio, "target": str(row.target) if row.target else None,
                "verdict": row.verdict, "missing": row.missing,
            }
            for row in rows
        ],
        "medians": summary,
        "raw": results,
    }


def write_report(report: dict[str, Any], folder: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown_path, json_path = folder / f"{stem}.md", folder / f"{stem}.json"
    markdown_path.write_text(render_markdown(report))
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    return markdown_path, json_path
