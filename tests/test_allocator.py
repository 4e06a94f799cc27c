"""bertft.training.allocator: freed activation-sized buffers are reused, not mapped and zero-filled again every step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bertft.training import allocator

from .helpers import cli_args, sst2_rows, write_tsv

# Allocates, touches and frees a 64 MiB tensor six times, as training steps do with their activations, and reports
# the minor page faults of the last three rounds (16,384 pages each when every round maps fresh memory). The first
# rounds may still grow the heap while small objects settle into it.
PROBE = """
import json, resource, sys, torch
from bertft.training.allocator import reuse_freed_memory
changed = reuse_freed_memory() if sys.argv[1] == "on" else False
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 1024 * 1024).fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"changed": changed, "faults": sum(faults[3:])}))
"""


def _probe(mode: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc tuning is Linux-only")
def test_freed_buffers_are_reused_instead_of_faulted_in_again() -> None:
    on, off = _probe("on"), _probe("off")
    assert on["changed"]
    assert on["faults"] < 1000, on  # three rounds of 16,384 pages each, served from the kept heap
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[always]" not in thp.read_text():  # with huge pages always on, faults are few anyway
        assert off["faults"] >= 3 * 16_000, off


@pytest.mark.parametrize(
    "env",
    [{"BERTFT_MALLOC": "system"}, {"MALLOC_MMAP_THRESHOLD_": "65536"}, {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}],
)
def test_a_deliberate_allocator_choice_is_left_alone(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert allocator.reuse_freed_memory() is False


def test_the_command_line_turns_it_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_bert_dir: Path) -> None:
    from bertft import cli
    from bertft.training import lightning_cli

    calls = []
    monkeypatch.setattr(lightning_cli, "reuse_freed_memory", lambda: calls.append(True) or True)
    train = write_tsv(tmp_path / "train.tsv", sst2_rows("train", 16))
    args = cli_args(tmp_path, command=None, encoder=tiny_bert_dir, train=train, quoting=False, logger=False)
    cli.main(args, run=False)
    assert calls == [True]


def test_a_glibc_that_caps_the_threshold_gets_32_mib(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    class CappedLibc:  # glibc versions that refuse an mmap threshold above their 32 MiB dynamic maximum
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return int(param != allocator._M_MMAP_THRESHOLD or value <= 32 << 20)

    for key in ("BERTFT_MALLOC", "LD_PRELOAD", *allocator._THEIRS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.17"))
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: CappedLibc())
    assert allocator.reuse_freed_memory() is True
    mmap, trim = allocator._M_MMAP_THRESHOLD, allocator._M_TRIM_THRESHOLD
    assert calls == [(mmap, 1 << 30), (mmap, 32 << 20), (trim, 32 << 20)]
