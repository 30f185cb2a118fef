import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """The real demo data (MNI152 from nilearn) at 64², few slices: fast enough for bundle runs."""
    from common.data import prepare_demo

    out = str(tmp_path_factory.mktemp("data") / "demo64")
    prepare_demo(out, image_size=64, stride=9, block=2, gap=0)
    return out


def skip_or_fail(reason: str) -> None:
    """Skip a test that cannot run here; under CI=true that is a failure (a missing input must not pass)."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: this test must run in CI)")
    pytest.skip(reason)
