"""VTimeLLM stage 2: a new LoRA on the LLM learns boundaries from InternVid dialogues (projector from stage 1, frozen).

    accelerate launch recipes/stage2.py --config recipes/configs/vicuna-7b/stage2.yaml
    python recipes/stage2.py --config recipes/configs/tiny/stage2.yaml   # CPU

What the stage reads, starts from, trains and leaves is STAGES[2] (vtimellm_hf.training.stages). Every knob is a
field of VTimeModelArguments (TRL's ModelConfig and the stage's inputs), VTimeDataArguments or VTimeTrainingArguments
(vtimellm_hf.training.trainer: TRL's SFTConfig and global_batch_size), set in the YAML and overridable on the command
line (--learning_rate 2e-4).
"""

from vtimellm_hf.training.stages import stage_main

if __name__ == "__main__":
    stage_main(2)
