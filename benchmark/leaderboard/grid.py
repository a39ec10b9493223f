"""Sample grids: a PNG of a run's first generated images (`sample_grid`), linked from its leaderboard row
(`with_grid` writes it under the output folder's ``samples/``)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from benchmark.leaderboard.records import Entry

SAMPLES_DIR = "samples"


def sample_grid(
    run_dir: str | Path, out_file: str | Path, *, max_images: int = 8, thumb: int = 128
) -> Path | None:
    """A PNG grid of the first `max_images` generated images of a run (in (key, image index) order, as
    `benchmark.generate` stores them under RUN_DIR/images), each scaled to fit a `thumb`-pixel square, four per
    row; written to `out_file`. None (and nothing written) when the run directory holds no decodable image."""
    from PIL import Image

    from benchmark.generate import iter_images

    try:
        ids = sorted(
            (key, index)
            for table in iter_images(run_dir, ["key", "image_index"])
            for key, index in zip(
                table.column("key").to_pylist(), table.column("image_index").to_pylist(), strict=True
            )
        )
    except (OSError, ValueError):  # unreadable or foreign files under images/
        return None
    wanted = set(ids[:max_images])
    found: dict[tuple[str, int], Image.Image] = {}
    for table in iter_images(run_dir, ["key", "image_index", "png"]):
        for row in table.to_pylist():
            if (row["key"], row["image_index"]) not in wanted:
                continue
            try:
                with Image.open(io.BytesIO(row["png"])) as image:
                    small = image.convert("RGB")
                    small.thumbnail((thumb, thumb))
            except Exception:  # noqa: BLE001 - an undecodable image is left out of the grid, whatever PIL raises
                continue
            found[(row["key"], row["image_index"])] = small
        if len(found) == len(wanted):
            break
    images = [found[i] for i in sorted(found)]
    if not images:
        return None
    columns = min(len(images), 4)
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * thumb, rows * thumb), "white")
    for i, image in enumerate(images):
        x, y = (i % columns) * thumb, (i // columns) * thumb
        grid.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, format="PNG")
    return out


def with_grid(entry: Entry, out: Path, max_images: int) -> Entry:
    """The entry with a sample grid of its run's images (the folder of its result file), written to
    OUT/samples/{sha256 of the result file's path}.png, when there are images to show."""
    if entry.result_file is None or max_images < 1:
        return entry
    name = hashlib.sha256(str(entry.result_file.resolve()).encode()).hexdigest()[:16]
    grid = sample_grid(entry.result_file.parent, out / SAMPLES_DIR / f"{name}.png", max_images=max_images)
    return Entry(entry.record, entry.result_file, grid)
