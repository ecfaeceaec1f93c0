"""train.return_freed_memory: glibc's fixed mmap threshold gives freed tensor memory back to the OS."""
import platform
import subprocess
import sys

import pytest
import yaml

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

PROBE = """
import os, sys, torch
from univseg.utils.allocator import return_freed_memory
if sys.argv[1] == "fixed":
    assert return_freed_memory()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
big = torch.ones(4 * 2**20)  # 16 MiB, freed: glibc's dynamic threshold rises to 16 MiB
del big
base = rss_mb()
blocks = [torch.ones(2 * 2**20) for _ in range(10)]  # 10 x 8 MiB, touched
del blocks[:-1]  # 72 MiB freed below the last block
print(rss_mb() - base)
"""


def run_probe(before, mode):
    out = subprocess.run([sys.executable, "-c", before + PROBE, mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def resident_growth_mb(mode):
    return float(run_probe("", mode).splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (Linux); other C libraries are left as they are")
def test_freed_tensors_leave_the_process_only_with_the_fixed_threshold():
    default, fixed = resident_growth_mb("default"), resident_growth_mb("fixed")
    assert default > 60  # glibc's default keeps the freed 72 MiB on the heap
    assert fixed < 20  # only the live 8 MiB block stays resident


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (Linux)")
@pytest.mark.parametrize("option", [False, True])
def test_the_training_option_sets_it_for_the_training_process(tiny_raw, tmp_path, option):
    """The probe runs in the process that trained: freed memory stays resident unless the option was on."""
    tiny_raw["train"].update({"iters": 1, "eval_interval": 0, "return_freed_memory": option})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))
    train = (
        "import yaml\n"
        "from univseg.config import validate_config\n"
        "from univseg.engine.trainer import Trainer\n"
        f"Trainer(validate_config(yaml.safe_load(open({str(cfg)!r}))), {str(tmp_path / 'w')!r}, progress=False).run()\n"
    )
    growth = float(run_probe(train, "default").splitlines()[-1])
    assert (growth < 20) if option else (growth > 60)
