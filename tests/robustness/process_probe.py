"""`vtimellm-hf COMMAND ...` as one process of a launcher's job, logging the work it does (see `test_processes.py`).

    torchrun --nproc_per_node N process_probe.py LOG DELAY COMMAND ARGS...

Appends to LOG, one line each, `RANK pid PID` when it starts, `RANK feature ID` for every feature file it writes,
`RANK load ID` for every video whose features an evaluation loads and `RANK ask QUESTION` for every question it
answers; after each feature and each batch of answers it sleeps DELAY seconds, so that a test can kill it mid-run.
Lines are short single `write`s to a file opened for appending: those of several processes do not mix.
"""

import os
import sys
import time
from pathlib import Path

from vtimellm_hf import cli, evaluation, evaluation_runs
from vtimellm_hf.data import extract


def main() -> int:
    log, delay, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    rank = os.environ.get("RANK", "0")

    def note(text: str) -> None:
        with open(log, "a", encoding="utf-8") as file:
            file.write(f"{rank} {text}\n")

    note(f"pid {os.getpid()}")
    write_feature = extract.write_feature

    def logged_write_feature(path, array):
        write_feature(path, array)
        note(f"feature {Path(path).stem}")
        time.sleep(delay)

    feature_store_loader = evaluation.feature_store_loader

    def logged_feature_store_loader(*args, **kwargs):
        load = feature_store_loader(*args, **kwargs)

        def logged_load(video_id):
            note(f"load {video_id}")
            return load(video_id)

        return logged_load

    generate_answers = evaluation_runs.generate_answers

    def logged_generate_answers(model, processor, conversations, features, **kwargs):
        answers = generate_answers(model, processor, conversations, features, **kwargs)
        for conversation in conversations:
            note(f"ask {conversation[-1]['content'][-1]['text']}")
        time.sleep(delay)
        return answers

    extract.write_feature = logged_write_feature
    evaluation.feature_store_loader = logged_feature_store_loader
    evaluation_runs.generate_answers = logged_generate_answers
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
