"""``conveyor demo``: a realistic three-stage job, on both worker kinds.

The job: a web farm left a pile of access logs (combined log format); for each
file, compute a report (requests per status code, bytes served, distinct
clients, busiest paths, error rate) and a CRC-32 of the file, and write the
report next to the others::

    paths ─▶ read (threads: I/O) ─▶ analyze (processes: CPU) ─▶ write (threads: I/O) ─▶ reports
             bytes of one file       parse every line,            one JSON file per
                                     count, checksum              input, returns the
                                                                  FileReport

``analyze`` is pure Python on purpose (a line parser and a table-driven CRC-32):
under the GIL, threads would take turns on it, so it runs on process workers,
while reading and writing files wait on the disk and run on threads.
``build_pipeline`` is importable, so that tests run a small one in-process; the
checksum equals ``zlib.crc32`` of the file, which lets them check the results.

This module does not import click: the command line calls :func:`generate`,
:func:`build_pipeline` and :class:`Summary` and does the printing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._pipeline import Pipeline

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ._observe._stats import RunStats

__all__ = [
    "DEFAULT_FILES",
    "DEFAULT_SIZE_KB",
    "READERS",
    "WRITERS",
    "DataSet",
    "FileReport",
    "Summary",
    "Workspace",
    "analyze",
    "build_pipeline",
    "crc32",
    "default_workers",
    "generate",
    "read_file",
    "workspace",
]

# Sized so that the default demo takes about 5-15 s on a 2-core machine.
DEFAULT_FILES = 400
DEFAULT_SIZE_KB = 256
TOP_PATHS = 5
READERS = WRITERS = 2  # thread workers of the read and write stages


def default_workers() -> int:
    """One process worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# -- the data set ------------------------------------------------------------------

_PATHS = (
    ["/", "/index.html", "/login", "/logout", "/search", "/cart", "/checkout", "/favicon.ico"]
    + [f"/api/v1/items/{i}" for i in range(40)]
    + [f"/static/js/app.{h}.js" for h in ("3f9a1c", "b07e22", "9d41aa")]
    + [f"/static/img/p{i:03d}.jpg" for i in range(60)]
    + [f"/blog/{year}/post-{i}" for year in (2022, 2023, 2024) for i in range(10)]
)
_METHODS = ["GET"] * 16 + ["POST"] * 3 + ["PUT", "DELETE", "HEAD"]
_STATUSES = [200] * 80 + [304] * 8 + [301, 302] * 2 + [404] * 4 + [403, 500, 502]
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class DataSet:
    """The generated logs: their paths, how many lines, how many bytes."""

    paths: tuple[Path, ...]
    lines: int
    nbytes: int


def _log_file(rng: random.Random, size: int, day: int) -> tuple[str, int]:
    clients = [
        f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        for _ in range(300)
    ]
    out: list[str] = []
    total = n = 0
    second = rng.randrange(86400)
    month = _MONTHS[day % 12]
    while total < size:
        second = (second + rng.randint(0, 3)) % 86400
        h, rest = divmod(second, 3600)
        m, s = divmod(rest, 60)
        status = rng.choice(_STATUSES)
        sent = 0 if status in (304, 301, 302) else int(rng.lognormvariate(8.5, 1.3))
        line = (
            f"{rng.choice(clients)} - - [{1 + day % 28:02d}/{month}/2024:{h:02d}:{m:02d}:{s:02d}"
            f' +0000] "{rng.choice(_METHODS)} {rng.choice(_PATHS)} HTTP/1.1" {status} {sent}'
            f' "-" "{rng.choice(_AGENTS)}"\n'
        )
        out.append(line)
        total += len(line)
        n += 1
    return "".join(out), n


def generate(directory: Path, files: int, size_kb: int, seed: int = 1) -> DataSet:
    """Write ``files`` access logs of about ``size_kb`` KiB each into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    lines = nbytes = 0
    for i in range(files):
        text, n = _log_file(rng, size_kb * 1024, i)
        path = directory / f"access-{i:04d}.log"
        data = text.encode()
        path.write_bytes(data)
        paths.append(path)
        lines += n
        nbytes += len(data)
    return DataSet(tuple(paths), lines, nbytes)


@dataclass(frozen=True)
class Workspace:
    """The demo's working directory: ``logs/`` in, ``reports/`` out."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


@contextlib.contextmanager
def workspace(base_dir: str | os.PathLike[str] | None, keep: bool) -> Iterator[Workspace]:
    """A fresh directory (under ``base_dir`` if given), removed at the end unless ``keep``.

    Only the directory made here is ever removed, never ``base_dir`` itself.
    """
    if base_dir is not None:
        os.makedirs(base_dir, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="conveyor-demo-", dir=base_dir))
    try:
        ws = Workspace(root)
        ws.logs.mkdir()
        ws.reports.mkdir()
        yield ws
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


# -- the stages ----------------------------------------------------------------------


def read_file(path: Path) -> tuple[str, bytes]:
    """Stage 1 (thread): the file's name and bytes."""
    return path.name, path.read_bytes()


def _crc_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32(data: bytes) -> int:
    """CRC-32 (the zlib one), in pure Python: the CPU-heavy part of ``analyze``."""
    table = _CRC_TABLE
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(frozen=True)
class FileReport:
    """What ``analyze`` finds in one log file."""

    name: str
    lines: int
    bad_lines: int
    bytes_served: int
    clients: int
    status: dict[int, int]
    paths: dict[str, int]
    methods: dict[str, int]
    busiest_hour: int
    crc32: str
    report_path: str = ""

    def top_paths(self, n: int = TOP_PATHS) -> list[tuple[str, int]]:
        return Counter(self.paths).most_common(n)


def analyze(named: tuple[str, bytes]) -> FileReport:
    """Stage 2 (process): parse every line, count, and checksum the file."""
    name, data = named
    status: Counter[int] = Counter()
    paths: Counter[str] = Counter()
    methods: Counter[str] = Counter()
    hours = [0] * 24
    clients: set[str] = set()
    served = bad = lines = 0
    for line in data.decode("utf-8", "replace").splitlines():
        lines += 1
        # host ident user [time] "method path proto" status bytes "referer" "agent"
        try:
            host, rest = line.split(" ", 1)
            stamp, rest = rest.split("[", 1)[1].split("]", 1)
            hour = int(stamp.split(":", 2)[1])
            _, request, tail = rest.split('"', 2)
            code_text, sent_text = tail.split(None, 2)[:2]
            method, path, _ = request.split(" ", 2)
            code = int(code_text)
        except (ValueError, IndexError):
            bad += 1
            continue
        clients.add(host)
        status[code] += 1
        paths[path] += 1
        methods[method] += 1
        hours[hour] += 1
        if sent_text.isdigit():
            served += int(sent_text)
    return FileReport(
        name=name,
        lines=lines,
        bad_lines=bad,
        bytes_served=served,
        clients=len(clients),
        status=dict(sorted(status.items())),
        paths=dict(paths),
        methods=dict(methods),
        busiest_hour=max(range(24), key=hours.__getitem__),
        crc32=f"{crc32(data):08x}",
    )


class WriteReport:
    """Stage 3 (thread): write ``<name>.json`` into the reports directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, report: FileReport) -> FileReport:
        path = self.directory / (Path(report.name).stem + ".json")
        body = {
            "file": report.name,
            "lines": report.lines,
            "bad_lines": report.bad_lines,
            "bytes_served": report.bytes_served,
            "clients": report.clients,
            "status": {str(k): v for k, v in report.status.items()},
            "top_paths": report.top_paths(),
            "methods": report.methods,
            "busiest_hour": report.busiest_hour,
            "crc32": report.crc32,
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, path)  # a report is either whole or absent
        return dataclasses.replace(report, report_path=str(path))


def build_pipeline(
    paths: Sequence[Path],
    reports: Path,
    *,
    workers: int = 2,
    readers: int = READERS,
    writers: int = WRITERS,
) -> Pipeline[FileReport]:
    """read (threads) → analyze (processes) → write (threads); yields the FileReports."""
    return (
        Pipeline(name="demo")
        .source(list(paths), name="paths")
        .map(read_file, workers=readers, kind="thread", name="read")
        .map(analyze, workers=workers, kind="process", name="analyze")
        .map(WriteReport(reports), workers=writers, kind="thread", name="write")
    )


# -- the summary ---------------------------------------------------------------------


@dataclass
class Summary:
    """Totals over the FileReports, as they come out of the pipeline."""

    files: int = 0
    lines: int = 0
    bytes_served: int = 0
    status: Counter[int] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)

    def add(self, report: FileReport) -> None:
        self.files += 1
        self.lines += report.lines
        self.bytes_served += report.bytes_served
        self.status.update(report.status)
        self.paths.update(report.paths)

    def render(self, data: DataSet, stats: RunStats, where: str) -> str:
        mb = data.nbytes / 1e6
        secs = stats.elapsed_seconds
        total = sum(self.status.values()) or 1
        codes = "  ".join(
            f"{code}: {n / total:.1%}" for code, n in sorted(self.status.items()) if n
        )
        top = ", ".join(f"{p} ({n:,})" for p, n in self.paths.most_common(3))
        return "\n".join(
            [
                f"analyzed {self.files} of {len(data.paths)} log files, {mb:.1f} MB, "
                f"{self.lines:,} requests in {secs:.2f}s ({mb / secs if secs else 0:.1f} MB/s)",
                f"bytes served  {self.bytes_served / 1e9:.2f} GB",
                f"status        {codes}",
                f"busiest paths {top}",
                where,
            ]
        )
