"""Plain TRL GRPO with LoRA: GRPOTrainer with GRPOConfig's defaults, generating with transformers.

The reward functions are llmkit's `math_accuracy` and `format` (plain Python functions with TRL's
reward signature), so that both sides optimise the same task; they cost microseconds per step.
"""

from _cli import CPU, args, lora
from datasets import load_dataset
from trl import GRPOConfig, GRPOTrainer

from llmkit.rewards import format_reward, math_accuracy_reward

a = args()
trainer = GRPOTrainer(
    model=a.model,
    reward_funcs=[math_accuracy_reward, format_reward],
    args=GRPOConfig(output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=a.per_device_train_batch_size,
                    learning_rate=a.learning_rate, num_generations=a.num_generations,
                    max_completion_length=a.max_completion_length, **CPU),
    train_dataset=load_dataset("json", data_files=a.data, split="train"),
    peft_config=lora(a),
)
trainer.train()
trainer.save_model()
