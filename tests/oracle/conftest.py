"""pytest setup shared by every oracle test module.

- The `corpus` marker: `@pytest.mark.corpus` (or `pytestmark = pytest.mark.corpus`) on a test that needs the
  shared corpus (../shared/models, kiln_oracle.CORPUS); without it, such tests are skipped, saying so.
- The `project` fixture: a kiln_oracle.Project in the test's tmp_path, which writes build configs with
  yaml.safe_dump and runs `kiln build` on them.

Shared helpers live in kiln_oracle.py (paths, feeds, run_artifact, Project), accuracy.py (the metrics) and
tflite_oracle.py (the LiteRT interpreter); test modules import those, never each other."""
import pytest

from kiln_oracle import CORPUS, Project

CORPUS_ABSENT = f"corpus tier: {CORPUS} is absent"


def pytest_configure(config):
    config.addinivalue_line("markers", "corpus: needs the shared corpus (../shared/models); skipped when it is absent")


def pytest_collection_modifyitems(config, items):
    if CORPUS.is_dir():
        return
    skip = pytest.mark.skip(reason=CORPUS_ABSENT)
    for item in items:
        if item.get_closest_marker("corpus"):
            item.add_marker(skip, append=False)  # first, so its reason is the one reported


@pytest.fixture
def project(tmp_path):
    """A kiln_oracle.Project rooted at tmp_path."""
    return Project(tmp_path)
