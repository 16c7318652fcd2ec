"""Command-line settings shared by the plain-TRL baselines.

bench/train.py passes the same values to llmkit and to these scripts: model, data, output
directory, number of steps, per-device batch, learning rate, max_length and LoRA r/alpha/
dropout/targets. Everything else is left at TRL's (or transformers') defaults, except the three
settings a CPU needs (`CPU` below). Each baseline also runs on its own:

    python bench/trl_baselines/sft.py --model .cache/bench/train/model-h256-l4 --data data/sft_train.jsonl \
        --output_dir /tmp/sft --max_steps 10 --per_device_train_batch_size 8 --learning_rate 1e-4
"""

import argparse

# What a CPU needs and nothing more: TRL's configs default to bf16 and gradient checkpointing.
CPU = {"use_cpu": True, "bf16": False, "gradient_checkpointing": False}


def args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="model directory (weights + tokenizer)")
    p.add_argument("--data", required=True, help="JSONL file in TRL's column layout")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, required=True)
    p.add_argument("--per_device_train_batch_size", type=int, required=True)
    p.add_argument("--learning_rate", type=float, required=True)
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--lora_r", type=int, default=0, help="0: full fine-tuning")
    p.add_argument("--lora_alpha", type=int, default=32)
    p.add_argument("--lora_dropout", type=float, default=0.05)
    p.add_argument("--lora_target_modules", default="all-linear")
    p.add_argument("--num_generations", type=int, default=8, help="GRPO")
    p.add_argument("--max_completion_length", type=int, default=64, help="GRPO")
    return p.parse_args()


def lora(a: argparse.Namespace):
    """The LoraConfig a PEFT user writes, or None for full fine-tuning."""
    if not a.lora_r:
        return None
    from peft import LoraConfig

    return LoraConfig(r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                      target_modules=a.lora_target_modules, task_type="CAUSAL_LM")
