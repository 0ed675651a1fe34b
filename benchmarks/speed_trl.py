"""One TRL SFTTrainer + PEFT run for benchmarks/speed.py, in a process of its own (so that its peak
memory is its own): the embedded model, LoRA or QLoRA, on the token rows speed.py rendered with
forgetless (input ids + completion masks), with speed.py's settings. Writes OUT/trl.json: each step's
seconds and real tokens, the peak RSS and the padding share.

Run by speed.py: python benchmarks/speed_trl.py ROWS CASE STEPS OUT SETTINGS_JSON
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole
import torch


def base_model(case: str):
    """The embedded model as TRL users load it: fp32, or 4-bit NF4 with double quantization (QLoRA)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from forgetless.model import loader as models

    kwargs: dict = {"dtype": torch.float32}
    if case == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        kwargs["device_map"] = "cpu"
    return AutoModelForCausalLM.from_pretrained(models.resolve("smollm2-135m-instruct"), **kwargs)


def sft_config(out: Path, steps: int, settings: dict):
    """speed.py's settings as SFTConfig: loss on the completions, no checkpointing, fp32 on the CPU."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=settings["batch"],
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=settings["lr"],
        lr_scheduler_type="cosine",
        max_length=settings["max_length"],
        completion_only_loss=True,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )


def trl_worker(rows_file: Path, case: str, steps: int, out: Path, settings: dict) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTTrainer

    torch.manual_seed(0)
    model = base_model(case)
    data = Dataset.from_list([json.loads(x) for x in rows_file.read_text().splitlines()])
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    lora = LoraConfig(task_type="CAUSAL_LM", **settings["lora"])
    trainer = SFTTrainer(model=model, args=sft_config(out, steps, settings), train_dataset=data, peft_config=lora)
    seen: list[tuple[int, int]] = []  # (real tokens, computed tokens) of each batch TRL collated
    inner = trainer.data_collator

    def recording(features):
        batch = inner(features)
        seen.append((int(batch["attention_mask"].sum()), batch["attention_mask"].numel()))
        return batch

    trainer.data_collator = recording
    trainer.add_callback(Clock())
    trainer.train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    real, total = sum(s[0] for s in seen[:steps]), sum(s[1] for s in seen[:steps])
    result = {
        "step_s": times,
        "tokens": [s[0] for s in seen[: len(times)]],
        "peak_gb": round(peak, 3),
        "padding_share": round(1 - real / max(total, 1), 4),
    }
    outputs.write_json(out / "trl.json", result)


if __name__ == "__main__":
    rows, case, steps, out, settings = sys.argv[1:]
    trl_worker(Path(rows), case, int(steps), Path(out), json.loads(settings))
