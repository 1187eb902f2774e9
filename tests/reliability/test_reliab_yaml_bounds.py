"""Hostile study files (issue 19, section 4): a YAML alias bomb under grid.axes and a huge
file of junk keys, generated for real and run through `python -m ncstudy.run` in a child
process. Before the bounds they took 80 s / 11.7 GB and 156 s / 4.9 GB and printed 2.1 GB and
302 MB; now exit 2 with a short message. The bounds are loose on purpose (a shared machine):
the point is gigabytes and minutes versus megabytes and seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from ncstudy.config import SpecError, load_study
from ncstudy.config.yaml_load import MAX_FILE_BYTES

HEAD = "name: hostile\nlosses: [{name: ce}]\n"


def alias_bomb(path: Path, levels: int = 9, fan: int = 10) -> Path:
    """`fan`**`levels` values from a file of about 1.5 KB (each level lists the previous
    one `fan` times), under grid.axes as in the report."""
    lines = [HEAD + "grid:", "  axes:", "    a0: &a0 [" + ", ".join(["1"] * fan) + "]"]
    for i in range(1, levels):
        lines.append(f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]")
    lines.append(f"    train.lr: *a{levels - 1}")
    path.write_text("\n".join(lines) + "\n")
    return path


def junk_keys(path: Path, size: int) -> Path:
    """`size` bytes of distinct unknown top-level keys."""
    with path.open("w") as f:
        f.write(HEAD)
        written, i = len(HEAD), 0
        while written < size:
            block = "".join(f"junk_key_{j:09d}: {j}\n" for j in range(i, i + 1000))
            block = block[: size - written]
            f.write(block[: block.rfind("\n") + 1] if written + len(block) >= size else block)
            written, i = written + len(block), i + 1000
    return path


# Runs the CLI and writes its peak RSS (kB) to argv[1]. The CLI's peak is read from this small
# launcher's RUSAGE_CHILDREN: a child forked straight from pytest would count the pages it
# shared with pytest before exec (ru_maxrss survives exec), gigabytes late in a long run.
LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_cli(study: Path, out: Path) -> tuple[int, str, float, int]:
    """(exit code, stderr + stdout, wall seconds, peak RSS in kB) of the CLI in a child."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    rss_file = out.parent / "cli-peak-rss-kb"
    start = time.perf_counter()
    cli = [sys.executable, "-m", "ncstudy.run", str(study), "--output", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(rss_file), *cli],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - start
    return proc.returncode, proc.stdout.decode(), seconds, int(rss_file.read_text())


def loads_quickly(path: Path, traced: bool = True) -> str:
    """The SpecError of load_study(path), its time bounded, and (`traced`: tracemalloc slows
    allocation-heavy code tenfold, so only for small files) its Python allocations."""
    start = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_study(path)
    seconds = time.perf_counter() - start
    assert seconds < 10, seconds  # measured: milliseconds (the bomb), about 1 s (junk)
    if traced:
        tracemalloc.start()
        with pytest.raises(SpecError):
            load_study(path)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 64 << 20, peak  # a few MB (the file, its nodes); was gigabytes
    return str(err.value)


@pytest.mark.slow
def test_alias_bomb_is_refused_in_milliseconds(tmp_path: Path) -> None:
    bomb = alias_bomb(tmp_path / "bomb.yaml")
    assert bomb.stat().st_size < 2000  # as small as the reported one
    message = loads_quickly(bomb)
    assert "expands to more than 50,000 keys and values" in message and "aliases" in message
    code, output, seconds, rss_kb = run_cli(bomb, tmp_path / "runs")
    assert code == 2, output
    assert "expands to more than" in output and "Traceback" not in output
    assert len(output) < 2000  # the reported message was 2.1 GB
    assert rss_kb < 2 << 20  # < 2 GiB: the Python + torch imports, not the expansion
    assert seconds < 120  # start-up on a loaded machine; the bomb alone took 80 s
    assert not (tmp_path / "runs").exists()


def test_a_self_referencing_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nlosses: &l [{name: ce, params: *l}]\n")
    assert "refers to a node that contains it" in loads_quickly(path)


@pytest.mark.slow
def test_huge_file_of_junk_keys_is_refused_by_its_size(tmp_path: Path) -> None:
    big = junk_keys(tmp_path / "junk.yaml", 50 << 20)  # 50 MB, as reported
    assert "a study file is at most" in loads_quickly(big)  # refused before reading it
    code, output, seconds, _ = run_cli(big, tmp_path / "runs")
    assert code == 2 and f"{big.stat().st_size:,} bytes" in output, output
    assert len(output) < 2000 and seconds < 120
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_junk_keys_under_the_size_bound_print_the_first_errors_and_a_count(
    tmp_path: Path,
) -> None:
    junk = junk_keys(tmp_path / "junk.yaml", MAX_FILE_BYTES - 100)
    keys = len(junk.read_text().splitlines()) - 2
    message = loads_quickly(junk, traced=False)
    assert message.count("unknown field") == 5  # the first errors ...
    assert f"... and {keys - 5:,} more errors" in message  # ... and a count of the rest
    assert len(message) < 3000
    code, output, seconds, rss_kb = run_cli(junk, tmp_path / "runs")
    assert code == 2 and f"... and {keys - 5:,} more errors" in output, output[-2000:]
    assert len(output) < 3000 and rss_kb < 2 << 20 and seconds < 120
    assert not (tmp_path / "runs").exists()
