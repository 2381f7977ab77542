"""Training stages: one folder per kind (config.py torch-free, stage.py, __main__.py), each runnable as
`accelerate launch -m stages.<kind> --config PIPELINE.yaml --stage NAME`; shared code in stages/common/."""

import logging

_said: set[str] = set()


def _first_time(record: logging.LogRecord) -> bool:
    """Whether a message is new (logging filter: a note repeated on every call is said once)."""
    new = record.getMessage() not in _said
    _said.add(record.getMessage())
    return new


# bitsandbytes (imported by peft and transformers wherever it is installed) tries, at import, to fetch a CPU
# kernel from the Hub, fails (no network, or an untrusted publisher) and warns in every stage's log, then uses
# its own kernel; the stages that quantize (QLoRA) work the same without it
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# 8-bit layers (QLoRA with bits: 8) note on every matmul that fp32 inputs are cast to fp16: once is enough
logging.getLogger("bitsandbytes.autograd._functions").addFilter(_first_time)
