"""The one dubbing pipeline: per-stage options, stages, dual CFG, schedulers, sampler windows, DDIM inversion,
compositing, and the orchestration that the CLI, the all-in-one node and the modular nodes share."""
