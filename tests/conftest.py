from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """../shared/datasets beside the checkout; tests using real files skip when absent."""
    return SHARED_DATASETS


def shared_file(relative: str) -> Path:
    path = SHARED_DATASETS / relative
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path
