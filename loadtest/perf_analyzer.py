"""perf_analyzer as a cross-check of the Locust numbers: find or unpack the binary, run it, parse its CSV.

The PyPI package ``perf-analyzer`` resolves only to a placeholder on this platform, but older
tritonclient wheels (2.2x-2.4x, manylinux x86_64) carry a ``perf_analyzer`` binary in their data
folder. It needs ``libb64.so.0d`` and ``libcudart.so.12``, and the nvidia-pytriton wheel we already
install ships both (under hashed names), so we link them into a private folder. Nothing here is
committed: the wheel is fetched on request (``--fetch-perf-analyzer``) into ``build/tools/`` and the
binary is unpacked from it at run time. When any step fails the runner reports
``perf_analyzer unavailable: <reason>`` instead of failing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from veil import wire

TOOLS_DIR = Path(__file__).resolve().parent.parent / "build" / "tools"
WHEEL_VERSION = "2.41.0"  # the last one checked to carry a working binary; any 2.2x-2.4x should do
NEEDED_LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


class PerfAnalyzerUnavailable(RuntimeError):
    """Why the cross-check could not run (missing wheel, missing library, binary that does not start)."""


def fetch_wheel(tools_dir: Path = TOOLS_DIR, version: str = WHEEL_VERSION) -> Path:
    """Download (not install) the tritonclient wheel that carries the binary; needs the package index."""
    tools_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--platform", "manylinux1_x86_64", "--python-version", "3.11", f"tritonclient=={version}", "-d"]
    subprocess.run([*cmd, str(tools_dir)], check=True, capture_output=True, text=True, timeout=300)
    return next(tools_dir.glob(f"tritonclient-{version}-*.whl"))


def _pytriton_libs() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    libs = Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
    return libs if libs.is_dir() else None


def _unpack(tools_dir: Path) -> Path:
    wheels = sorted(tools_dir.glob("tritonclient-*-manylinux*x86_64.whl"))
    if not wheels:
        raise PerfAnalyzerUnavailable(
            f"no perf_analyzer on PATH and no tritonclient 2.2x-2.4x wheel in {tools_dir}"
            " (python -m veil.loadtest.runner --fetch-perf-analyzer downloads one)"
        )
    dest = tools_dir / "perf_analyzer"
    binary = dest / "perf_analyzer"
    if not binary.exists():
        with zipfile.ZipFile(wheels[-1]) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/data/bin/perf_analyzer")), None)
            if member is None:
                raise PerfAnalyzerUnavailable(f"{wheels[-1].name} carries no perf_analyzer binary")
            dest.mkdir(parents=True, exist_ok=True)
            binary.write_bytes(zf.read(member))
        binary.chmod(0o755)
    libdir = dest / "lib"
    libdir.mkdir(exist_ok=True)
    source = _pytriton_libs()
    for name, pattern in NEEDED_LIBS.items():
        link = libdir / name
        if link.exists():
            continue
        found = sorted(source.glob(pattern)) if source else []
        if found:
            link.unlink(missing_ok=True)
            link.symlink_to(found[-1])
    return binary


def find_perf_analyzer(tools_dir: Path = TOOLS_DIR) -> tuple[Path, dict[str, str]]:
    """(binary, environment to run it with); raises PerfAnalyzerUnavailable with the reason."""
    env = dict(os.environ)
    on_path = shutil.which("perf_analyzer")
    binary = Path(on_path) if on_path else _unpack(tools_dir)
    if not on_path:
        libdir = binary.parent / "lib"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libdir), env.get("LD_LIBRARY_PATH", "")) if p)
    try:
        probe = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PerfAnalyzerUnavailable(f"{binary} does not start: {exc}") from exc
    text = probe.stdout + probe.stderr
    if "error while loading shared libraries" in text or (probe.returncode != 0 and "Usage" not in text):
        raise PerfAnalyzerUnavailable(f"{binary} does not start: {text.strip().splitlines()[0][:300]}")
    return binary, env


def write_input_data(texts: Sequence[str], path: Path, limit: int = 500) -> Path:
    """perf_analyzer's JSON input format for one BYTES input ``text`` of shape [1]."""
    path.write_text(json.dumps({"data": [{wire.TEXT: [t]} for t in texts[:limit]]}))
    return path


def parse_csv(text: str) -> list[dict[str, float]]:
    """Rows of perf_analyzer's ``-f`` CSV (latencies in microseconds) as numbers."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")})
    return rows


def run(
    binary: Path,
    env: dict[str, str],
    *,
    model: str,
    url: str,
    protocol: str,
    concurrency: int,
    input_data: Path,
    csv_path: Path,
    client_id: str | None = "perf-analyzer",
    request_count: int = 100,
    timeout: float = 120.0,
) -> dict:
    """One measurement at one concurrency; returns the CSV row plus the command, or an ``error``."""
    cmd = [str(binary), "-m", model, "-u", url, "-i", protocol, "--input-data", str(input_data)]
    cmd += ["--shape", "text:1", "--concurrency-range", f"{concurrency}:{concurrency}"]
    # count windows keep the run short and bounded; a loose stability bound because the CPU is shared
    # (perf_analyzer writes no numbers at all for a level it never finds stable)
    cmd += ["--measurement-mode", "count_windows", "--measurement-request-count", str(request_count)]
    cmd += ["-s", "100", "-r", "8", "-f", str(csv_path)]
    if client_id:
        cmd += ["--request-parameter", f"veil-client-id:{client_id}:string"]
    entry: dict = {"model": model, "protocol": protocol, "concurrency": concurrency, "command": " ".join(cmd)}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        entry["error"] = f"timed out after {timeout:.0f}s"
        return entry
    if proc.returncode != 0 or not csv_path.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        entry["error"] = f"exit {proc.returncode}: {'; '.join(tail)[:400]}".replace("|", "/")
        return entry
    rows = parse_csv(csv_path.read_text())
    if not rows:
        entry["error"] = "empty CSV"
        return entry
    entry.update(rows[-1])
    return entry
