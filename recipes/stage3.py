"""VTimeLLM stage 3: the stage-2 LoRA is merged and a new LoRA is tuned on ANet/DiDeMo dialogues and VideoInstruct.

    accelerate launch recipes/stage3.py --config recipes/configs/vicuna-7b/stage3.yaml
    python recipes/stage3.py --config recipes/configs/tiny/stage3.yaml   # CPU

What the stage reads, starts from, trains and leaves is STAGES[3] (vtimellm_hf.training.stages). Every knob is a
field of VTimeModelArguments (TRL's ModelConfig and the stage's inputs), VTimeDataArguments or VTimeTrainingArguments
(vtimellm_hf.training.trainer: TRL's SFTConfig and global_batch_size), set in the YAML and overridable on the command
line (--learning_rate 2e-4).
"""

from vtimellm_hf.training.stages import stage_main

if __name__ == "__main__":
    stage_main(3)
