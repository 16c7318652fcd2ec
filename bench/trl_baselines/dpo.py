"""Plain TRL DPO with LoRA: DPOTrainer with DPOConfig's defaults (reference = the disabled adapter)."""

from _cli import CPU, args, lora
from datasets import load_dataset
from trl import DPOConfig, DPOTrainer

a = args()
trainer = DPOTrainer(
    model=a.model,
    args=DPOConfig(output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=a.per_device_train_batch_size,
                   learning_rate=a.learning_rate, max_length=a.max_length, **CPU),
    train_dataset=load_dataset("json", data_files=a.data, split="train"),
    peft_config=lora(a),
)
trainer.train()
trainer.save_model()
