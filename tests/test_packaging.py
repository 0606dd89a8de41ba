"""What a `pip install` of the package carries: built as a wheel, as pip builds one."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_model_card_template(tmp_path):
    # `convert-original` and `push` render the card from the template at their very end: a wheel without it fails
    # there, after the whole conversion
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("vtimellm_hf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "vtimellm_hf/model/modeling_vtime_llama.py" in names
        template = archive.read("vtimellm_hf/templates/model_card.md")
        audio_visual = archive.read("vtimellm_hf/templates/audio_visual_model_card.md")
    assert template == (REPO_ROOT / "model_card" / "template.md").read_bytes()
    assert audio_visual == (REPO_ROOT / "model_card" / "audio_visual.md").read_bytes()
