"""tools/benchmark.py runs end to end and prints every method, the ratios and the machine."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_prints_times_memory_and_ratios():
    out = subprocess.run([sys.executable, str(ROOT / 'tools' / 'benchmark.py'), '--quick'],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    assert re.search(r'machine: .*threads, load average', out)
    header = next(line for line in out.splitlines() if line.strip().startswith('C x H'))
    for column in ('conv ms', 'unfold ms', 'ours ms', 'sliced ms', 'ours/conv', 'unfold/ours',
                   'mem unfold/ours'):
        assert column in header
    row = next(line for line in out.splitlines() if line.strip().startswith('32 x 14'))
    numbers = [float(v) for v in re.findall(r'(\d+\.\d+)', row)]
    assert len(numbers) == 4 * 2 + 4 and all(v > 0 for v in numbers)  # ms+MiB per method, ratios
