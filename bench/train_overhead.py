"""What Ray Train costs per step: the same tiny SDXL-SG run in one process (`train_local`) and through
`training.train` on Ray Train (one CPU worker, Ray Data streaming the rows), in one run of this script.

Both runs write every step to TensorBoard; the steady-state rate is read from the event wall times between step
`--skip` and the last step, so that start-up (Ray, the worker group, Ray Data, model loading) is left out. It
prints both rates in steps/s and their ratio (target ≥ 0.8: Ray Train adds little per step). Before the loop
reported only checkpoint steps, every `ray.train.report` waited for the Ray Train controller's 2 s poll, which
capped any run at about 0.5 steps/s::

    python bench/train_overhead.py --steps 30
    python bench/train_overhead.py --steps 60 --checkpoint-every 20   # with checkpoints inside the window

Tiny random-weight models (`laion_sg.offline`) and the offline fixture dataset: the rates say nothing about a
real SDXL step, only about what the loop and Ray Train add to it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from laion_sg.offline import make_tiny_models
from laion_sg.offline.fixtures import write_fixture_dataset
from schemas.runs import init_ray
from training.rows import find_splits
from training.settings import TrainSettings, run_dir
from training.train import train, train_local

TINY_ENCODER = {"hidden_dim": 16, "mlp_hidden_dim": 32}


def enlarge_train_split(data: Path, copies: int) -> int:
    """Repeat the fixture's train rows `copies` times under new keys, in its one train file, so that the measured
    steps stay inside one epoch (each epoch restarts Ray Data's streaming execution, seconds on a tiny split, a
    cost a real epoch of millions of rows amortises). Returns the train rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    (train_file,) = find_splits(data)["train"]
    table = pq.read_table(train_file)
    parts = []
    for copy in range(copies):
        keys = pc.binary_join_element_wise(table["key"], pa.scalar(f"-{copy}"), "")
        parts.append(table.set_column(table.schema.get_field_index("key"), "key", keys))
    pq.write_table(pa.concat_tables(parts), train_file)
    return table.num_rows * copies


def steady_rate(events_dir: Path, skip: int) -> tuple[float, int]:
    """Steps per second between step `skip` and the last step, from the TensorBoard events' wall times."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    wall = {e.step: e.wall_time for e in accumulator.Scalars("train/loss")}
    last = max(wall)
    if last <= skip:
        raise SystemExit(f"--steps must exceed --skip ({skip}); the run logged {last} steps")
    return (last - skip) / (wall[last] - wall[skip]), last - skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each run")
    parser.add_argument("--skip", type=int, default=3, help="first steps left out of the rate (start-up)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="0: only the final checkpoint")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--models", help="a `laion-sg make-tiny-models` folder (default: built in a temp dir)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="train_overhead_") as tmp:
        root = Path(tmp)
        models = Path(args.models).resolve() if args.models else root / "models"
        if not args.models:
            make_tiny_models(models)
        data = write_fixture_dataset(root / "data")
        rows = enlarge_train_split(data, copies=-(-(args.steps * 2 + 8) // 9))

        def settings(output: str) -> TrainSettings:
            return TrainSettings(
                input=str(data), model=str(models / "sdxl"), output=str(root / output), max_steps=args.steps,
                checkpoint_every=args.checkpoint_every or args.steps, val_every=0, val_batches=0,
                resolution=args.resolution, batch_size=2, warmup_steps=1, encoder=TINY_ENCODER,
            )  # fmt: skip

        local = settings("local")
        train_local(local)
        local_rate, counted = steady_rate(Path(local.output), args.skip)
        init_ray(num_cpus=2)
        on_ray = settings("ray")
        train(on_ray)
        ray_rate, _ = steady_rate(run_dir(on_ray), args.skip)

    print(f"steps {args.skip + 1}..{args.steps} ({counted} steps, one epoch of {rows} rows), batch 2, "
          f"{args.resolution} px, tiny SDXL-SG")  # fmt: skip
    print(f"local (one process):      {local_rate:8.3f} steps/s")
    print(f"Ray Train (1 CPU worker): {ray_rate:8.3f} steps/s")
    print(f"ratio Ray Train / local:  {ray_rate / local_rate:8.3f}  (target >= 0.8)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
