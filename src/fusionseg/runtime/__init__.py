"""Where and how work runs: devices and threads, precision (the measured ``--amp`` choice), DDP, memory.

- :mod:`.devices`: device choice, threads, seeds, autocast dtype, CPU allocator tuning;
- :mod:`.precision`: times fp32 against bf16/fp16 on this machine and keeps the faster (cached);
- :mod:`.distributed`: torchrun / DDP process groups and rank-0-only work;
- :mod:`.memory`: a training step's memory, estimated on the meta device;
- :mod:`.memory_budget`: ``--memory`` values and the default share of free RAM for prediction;
- :mod:`.tensorboard_log`: scalars for TensorBoard when it is installed;
- :mod:`.progress`: bars on terminals only, one line per epoch or case in logs.
"""
