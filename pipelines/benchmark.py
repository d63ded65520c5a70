"""Run benchmarks and record them in docs/BENCHMARKS.md.

    python -m pipelines.benchmark TOPIC [TOPIC ...] [--quick]

Each topic is a module ``pipelines/benchmarks/<topic>.py`` with ``TITLE`` and
``run(quick: bool) -> str`` returning a Markdown section body. The section of
docs/BENCHMARKS.md for that topic is replaced with the new body, headed by
the exact command, the date and the machine it ran on.
"""

from __future__ import annotations

import datetime
import importlib
import os
import pkgutil
import platform
import re
from pathlib import Path

import torch

import pipelines.benchmarks as topics_package
from nr.io import atomic_file
from pipelines.common import CommandParser, run_command

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\nWritten by `python -m pipelines.benchmark TOPIC`; every section names the "
    "command, the date and the machine that produced it. Re-run a topic to refresh its section.\n"
)


def available_topics() -> list[str]:
    """Topic modules; modules starting with "_" are helpers shared by the topics."""
    return sorted(
        m.name for m in pkgutil.iter_modules(topics_package.__path__) if not m.name.startswith("_")
    )


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def write_section(topic: str, title: str, command: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the section of `topic` in `doc`, atomically."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else HEADER
    start, end = f"<!-- {topic}:start -->", f"<!-- {topic}:end -->"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"{start}\n## {title}\n\nCommand: `{command}`  \n"
        f"Run: {stamp} on {machine_description()}\n\n{body.strip()}\n{end}"
    )
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(doc) as tmp:
        tmp.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    names = available_topics()
    parser = CommandParser("python -m pipelines.benchmark", __doc__)
    parser.add_argument(
        "topics",
        nargs="+",
        choices=names,
        metavar="TOPIC",
        help=f"one or more of: {', '.join(names)}",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs untouched")
    parser.add_argument("--scan", type=Path, help="measured: the measured scan (docs/formats.md)")
    parser.add_argument(
        "--model", type=Path, help="diffusionblend: the prior's folder (default: the shipped one)"
    )
    parser.add_argument(
        "--guard",
        choices=("seeing", "blind"),
        help="heldout: the DiffNR rows' warm start sees the guard's views or is blind to them "
        "(default: GuardConfig's)",
    )
    args = parser.parse_args(argv)
    for topic in args.topics:
        module = importlib.import_module(f"pipelines.benchmarks.{topic}")
        # the options a topic takes (OPTIONS) are passed to its run() and named in its command
        given = {name: getattr(args, name) for name in getattr(module, "OPTIONS", ())}
        body = module.run(quick=args.quick, **given)
        print(f"## {module.TITLE}\n\n{body}\n")
        if not args.no_write:
            command = "python -m pipelines.benchmark " + topic + (" --quick" if args.quick else "")
            command += "".join(f" --{k} {v}" for k, v in given.items() if v is not None)
            write_section(topic, module.TITLE, command, body)


if __name__ == "__main__":
    run_command(main)
