"""A stage of LongVALE-LLM or AVicuna: the YAML names the model (`family`) and the stage (`stage`).

    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/family_stage.py \
        --config recipes/configs/longvale/stage2.yaml
    python recipes/family_stage.py --config recipes/configs/tiny-avicuna/stage3.yaml   # CPU

What each stage loads, merges, trains and leaves is its row of FAMILY_STAGES (vtimellm_hf.training.family_stages).
Every knob is a field of FamilyModelArguments, FamilyDataArguments or VTimeTrainingArguments, set in the YAML and
overridable on the command line (--av_ratio 0.1).
"""

from vtimellm_hf.training.family_stages import family_stage_main

if __name__ == "__main__":
    family_stage_main()
