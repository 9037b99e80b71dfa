"""What the notebooks import: one small module in front of the package spotify_streams/.

Each name below comes from the module of its concern (README, "Where things live"):
config (runs, paths, parameters), dataset (reading and cleaning), features, evaluation
(splits, scores, the evidence rule), metrics_files, search_spaces, modeling (baselines, the
Keras network, the tie rule, saved models and predictions), parallel (processes, Dask,
progress) and plots. Importing this module changes nothing in the process; setup_notebook()
(or configure_runtime(), before TensorFlow is imported) does.
"""

from __future__ import annotations

from spotify_streams.config import Run, check_parameters, data_banner, file_sha256, resolve_run
from spotify_streams.dataset import clean, load_raw, load_songs, pair_key, parse_numbers, save_clean
from spotify_streams.errors import DataError, MissingStepError, ParameterError
from spotify_streams.evaluation import (
    ALPHA,
    POWER,
    artist_key,
    cv_splits,
    median_factor,
    paired_difference,
    r2_interval,
    scoring,
    split_train_test,
)
from spotify_streams.features import (
    AGE,
    FEATURE_SETS,
    add_features,
    feature_columns,
    log_streams,
    make_preprocessor,
)
from spotify_streams.metrics_files import load_metrics, save_metrics
from spotify_streams.modeling.baselines import make_baseline
from spotify_streams.modeling.network import (
    STEPS_PER_EXECUTION,
    KerasMLPRegressor,
    build_mlp,
    make_mlp,
)
from spotify_streams.modeling.predict import CONFIDENCE_LEVELS, predict_streams, save_model
from spotify_streams.modeling.selection import (
    SIMPLICITY,
    grid_param,
    simplest_within_noise,
    simplicity,
    tie_rule,
    within_noise,
)
from spotify_streams.parallel import BAR_FORMAT, parallel_backend, search_progress
from spotify_streams.plots import log_axis, save_figure, use_series_style
from spotify_streams.runtime import configure_runtime
from spotify_streams.schema import AUDIO_NUMERIC, NAME_COLUMNS, PLATFORM_COLUMNS
from spotify_streams.search_spaces import (
    ORIGINAL_GRID,
    ORIGINAL_MLP,
    QUICK_GRID,
    QUICK_TREE_GRIDS,
    TREE_GRIDS,
)

__all__ = [
    "AGE", "ALPHA", "AUDIO_NUMERIC", "BAR_FORMAT", "CONFIDENCE_LEVELS", "FEATURE_SETS",
    "NAME_COLUMNS", "ORIGINAL_GRID", "ORIGINAL_MLP", "PLATFORM_COLUMNS", "POWER", "QUICK_GRID",
    "QUICK_TREE_GRIDS", "SIMPLICITY", "STEPS_PER_EXECUTION", "TREE_GRIDS", "DataError",
    "KerasMLPRegressor", "MissingStepError", "ParameterError", "Run", "add_features",
    "artist_key", "build_mlp", "clean", "configure_runtime", "cv_splits", "feature_columns",
    "file_sha256", "grid_param", "load_metrics", "load_raw", "load_songs", "log_axis",
    "log_streams", "make_baseline", "make_mlp", "make_preprocessor", "median_factor",
    "pair_key", "paired_difference", "parallel_backend", "parse_numbers", "predict_streams",
    "r2_interval", "save_clean", "save_figure", "save_metrics", "save_model", "scoring",
    "search_progress", "setup_notebook", "simplest_within_noise", "simplicity",
    "split_train_test", "tie_rule", "within_noise",
]


def setup_notebook(**parameters) -> Run:
    """A notebook's first call: set the runtime (configure_runtime), check the parameters,
    resolve the run, say which data it runs on (a loud banner for the synthetic sample) and set
    the look of every figure."""
    configure_runtime()
    check_parameters(**parameters)
    run = resolve_run(parameters.get("DATA_PATH"), parameters.get("OUTPUT_DIR"),
                      quick=parameters.get("QUICK", False))
    if run.is_real:
        print(f"Data: {run.data_path.name}, the original Kaggle file (sha256 verified).")
    else:
        from IPython.display import Markdown, display

        display(Markdown(f"> **{data_banner(run)}**"))
    use_series_style()
    return run
