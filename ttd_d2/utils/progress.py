"""Console progress for long jobs whose detail goes to a log file (tools/quickstart.py): a
loader that advances a progress bar, and a subprocess whose output is logged while a bar
follows its iteration lines."""
import collections
import os
import re
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

__all__ = ["Progress", "ITERATION_LINE", "run_logged"]

# detectron2's CommonMetricPrinter line: " eta: 0:01:02  iter: 19  total_loss: ..."
ITERATION_LINE = re.compile(r"\biter: (\d+)\b")


class Progress:
    """A data loader that advances a shared progress bar by one per batch (one bar per stage,
    over several loaders); keeps ``len`` for detectron2's ``inference_on_dataset``."""

    def __init__(self, loader: Iterable, bar: tqdm):
        self.loader, self.bar = loader, bar

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.bar.update(1)


def run_logged(cmd: Sequence[str], log_path: Path, bar: tqdm, what: str) -> None:
    """Run ``cmd`` with its output appended to ``log_path``, ``bar`` moved to each detectron2
    iteration line; raise ``RuntimeError`` with its last lines if it fails (``what`` names it)."""
    tail = collections.deque(maxlen=40)
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # lines arrive as they are printed
    with open(log_path, "a", encoding="utf-8") as log, \
            subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            tail.append(line)
            match = ITERATION_LINE.search(line)
            if match:
                bar.update(int(match.group(1)) + 1 - bar.n)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit code {proc.returncode}); full log in {log_path}; "
                           f"its last lines:\n{''.join(tail)}")
