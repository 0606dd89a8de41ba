"""The recipes' entry point configures logging as `vtimellm-hf -v/-q` does, from `--log_level`."""

import logging
from pathlib import Path

import pytest

from vtimellm_hf.training import stages


@pytest.mark.parametrize(
    "arguments, shown, hidden",
    [
        ([], ["a warning"], ["progress"]),
        (["--log_level", "info"], ["progress", "a warning"], []),
        (["--log_level", "error"], [], ["progress", "a warning"]),
    ],
)
def test_stage_main_shows_the_package_messages_from_the_log_level(tmp_path, monkeypatch, capsys, arguments, shown,
                                                                   hidden):  # fmt: skip
    def run_stage(stage, model_args, data_args, training_args):
        logger = logging.getLogger("vtimellm_hf.training.stages")
        logger.info("progress")
        logger.warning("a warning")
        return tmp_path

    monkeypatch.setattr(stages, "run_stage", run_stage)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "tiny" / "stage2.yaml"
    argv = ["--config", str(recipe), "--output_dir", str(tmp_path), *arguments]
    assert stages.stage_main(2, argv) == tmp_path
    error = capsys.readouterr().err
    for message in shown:
        assert f"vtimellm_hf.training.stages: {message}" in error, error
    for message in hidden:
        assert message not in error, error
    # The settings of the process come back once the stage has run
    assert logging.getLogger("vtimellm_hf").level == logging.NOTSET
