"""Plain causal-LM pretraining: transformers.Trainer + DataCollatorForLanguageModeling.

Each text is tokenized on its own (truncated to max_length) and batches are padded to their
longest row: the textbook recipe, without packing.
"""

from _cli import CPU, args
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

a = args()
tokenizer = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForCausalLM.from_pretrained(a.model)
dataset = load_dataset("json", data_files=a.data, split="train")
dataset = dataset.map(lambda b: tokenizer(b["text"], truncation=True, max_length=a.max_length), batched=True,
                      remove_columns=dataset.column_names)
trainer = Trainer(
    model=model,
    args=TrainingArguments(output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=a.per_device_train_batch_size,
                           learning_rate=a.learning_rate, **CPU),
    train_dataset=dataset,
    data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
)
trainer.train()
trainer.save_model()
