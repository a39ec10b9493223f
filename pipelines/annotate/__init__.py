"""The annotation job: input shards -> VLM (hf | vllm | openai) -> validated scene graphs -> Parquet shards.

    python -m pipelines.annotate --input DIR --output OUT --task scene_graph --engine hf --model MODEL
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m pipelines.annotate ...

Stages (Ray Data, streaming): read each pending shard (`pipelines.ingest.read_shard`) -> decode and bound every
image on CPU (`pipelines.images.prepare_batch`) -> the engine -> parse, validate or repair
(`pipelines.postprocess`). The driver collects the small per-row results and, as soon as every row of a shard has
arrived, writes ``OUT/data/{shard}.parquet``: it reads the shard again for the original columns and image bytes,
joins the annotations by row position, writes a hidden temporary file and renames it into place. Original image
bytes thus never go through the engine or the postprocess stage.

Resume: a shard whose output file exists is skipped, and a file only ever appears complete (atomic rename), so a
killed run loses at most the shards in flight and a re-run neither duplicates nor drops a row. This is more robust
here than Ray Data's job-level checkpointing (``DataContext.checkpoint_config``), which filters rows by id at
the read of a Ray datasource: it needs cluster-shared checkpoint storage separate from the output, and a row can
be written to the output without being checkpointed (or the reverse) when a run dies between the two. The
output directory also holds ``run.json``, the settings that decide what a row contains (input, sharding, filters,
task, prompt version, limits, model, images); a re-run with different settings is refused instead of mixing.

Every input row that passes the ingest filters comes out exactly once with a status (ok | repaired | failed and
why); filtered rows are counted by reason in ``OUT/summary.json``.

One module per responsibility: `settings` (the job's settings and their flags), `stages` (the Ray Data
pipeline), `writing` (one shard's output files), `summary` (the run summary and the progress line), `card`
(``OUT/README.md``) and `job` (checks, the resume guard, `run` and `main`). The names below are the package's
interface.
"""

from pipelines.annotate.card import dataset_card_yaml
from pipelines.annotate.job import check_before_start, init_ray, main, run
from pipelines.annotate.settings import (
    AnnotateConfig,
    AnnotateSettings,
    ConfigError,
    load_config,
)
from pipelines.annotate.stages import ShardDatasource, build_dataset
from pipelines.annotate.summary import OutputTotals, Progress, RunSummary
from pipelines.annotate.writing import (
    ShardError,
    ShardResult,
    annotated_shard_table,
    output_schema,
    read_shard_records,
    write_shard,
)

__all__ = [
    "AnnotateConfig",
    "AnnotateSettings",
    "ConfigError",
    "OutputTotals",
    "Progress",
    "RunSummary",
    "ShardDatasource",
    "ShardError",
    "ShardResult",
    "annotated_shard_table",
    "build_dataset",
    "check_before_start",
    "dataset_card_yaml",
    "init_ray",
    "load_config",
    "main",
    "output_schema",
    "read_shard_records",
    "run",
    "write_shard",
]
