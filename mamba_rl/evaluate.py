"""``mamba-rl-eval`` / ``python -m mamba_rl.evaluate``: evaluate a trained policy (see
:mod:`mamba_rl.training.evaluate`, where the evaluation lives; its names are re-exported here)."""

import sys

from mamba_rl.training.evaluate import (
    EVAL_SEED,
    MemoryEpisodes,
    _EpisodeBatch,
    build_policy,
    default_horizons,
    evaluate_env,
    evaluate_horizons,
    evaluate_modes,
    evaluate_policy,
    format_return_table,
    format_table,
    hashed_noise,
    load_policy,
    main,
    mean_ci95,
    play_memory_episodes,
    resolve_device,
    run_episodes,
)

__all__ = [
    "EVAL_SEED",
    "MemoryEpisodes",
    "build_policy",
    "default_horizons",
    "evaluate_env",
    "evaluate_horizons",
    "evaluate_modes",
    "evaluate_policy",
    "format_return_table",
    "format_table",
    "hashed_noise",
    "load_policy",
    "main",
    "mean_ci95",
    "play_memory_episodes",
    "resolve_device",
    "run_episodes",
    "_EpisodeBatch",
]

if __name__ == "__main__":
    sys.exit(main())
