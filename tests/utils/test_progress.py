"""ttd_d2/utils/progress.py: a logged subprocess whose iteration lines move a bar, and its failure message."""
import io
import sys

import pytest
from tqdm import tqdm

from ttd_d2.utils.progress import Progress, run_logged

SCRIPT = "import sys\nfor i in range(3):\n    print(f' eta: 0:00:01  iter: {i}  total_loss: 1.0')\nsys.exit({code})\n"


def test_run_logged_follows_iterations_and_logs(tmp_path):
    log = tmp_path / "log.txt"
    with tqdm(total=3, file=io.StringIO()) as bar:
        run_logged([sys.executable, "-c", SCRIPT.replace("{code}", "0")], log, bar, "the job")
        assert bar.n == 3
    assert log.read_text().count("iter:") == 3


def test_run_logged_failure_names_the_job_and_its_last_lines(tmp_path):
    with tqdm(total=3, file=io.StringIO()) as bar, pytest.raises(RuntimeError, match=r"(?s)the job failed \(exit code 2\).*iter: 2"):
        run_logged([sys.executable, "-c", SCRIPT.replace("{code}", "2")], tmp_path / "log.txt", bar, "the job")


def test_progress_counts_batches():
    with tqdm(total=4, file=io.StringIO()) as bar:
        loader = Progress([[1], [2], [3]], bar)
        assert len(loader) == 3 and list(loader) == [[1], [2], [3]] and bar.n == 3
