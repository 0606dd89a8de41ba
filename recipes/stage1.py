"""VTimeLLM stage 1: the projector alone learns to map one CLIP image embedding into the LLM (LCS-558K, plain template).

    accelerate launch recipes/stage1.py --config recipes/configs/vicuna-7b/stage1.yaml
    python recipes/stage1.py --config recipes/configs/tiny/stage1.yaml   # CPU

What the stage reads, starts from, trains and leaves is STAGES[1] (vtimellm_hf.training.stages). Every knob is a
field of VTimeModelArguments (TRL's ModelConfig and the stage's inputs), VTimeDataArguments or VTimeTrainingArguments
(vtimellm_hf.training.trainer: TRL's SFTConfig and global_batch_size), set in the YAML and overridable on the command
line (--learning_rate 2e-4).
"""

from vtimellm_hf.training.stages import stage_main

if __name__ == "__main__":
    stage_main(1)
