"""What every process needs before and around the work: simulated CPU devices and start-up
flags (``devices``, ``logs``), the devices' axis and placement (``parallel``), multi-process
JAX (``distributed``), stopping on signals (``preemption``), checkpoints and the run's saved
config in a workdir (``checkpointing``, ``run_config``, ``workdir``)."""
