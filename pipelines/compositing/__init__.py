"""Gen4Gen-style compositing (issue 12, section 1): segmented concept images pasted into engine-proposed boxes on a
background, then repainted, as a Ray Data job (`python -m pipelines.compositing`, `job`).

- `plan`: the input (``scene/concept/*.jpg``), backgrounds, and the deterministic plan of compositions.
- `layout`: the layout step's boxes: `Box`, the engine answer's JSON schema and parser, `validate_layout` and
  `repair_layout` (inside the canvas, minimum size, bounded overlap; repaired or rejected with a reason).
- `layout_task`: the ``layout`` task the annotation engines answer (a JSON schema per row).
- `masks`: foreground masks of the concepts (CLIPSeg through transformers) and their checks.
- `composite`: pasting into the boxes, the repaint mask, SDXL background generation and inpainting.
- `stages`: the mask and composite steps as Ray Data actors.
- `settings` and `job`: the job's settings, the steps in order, output rows and resume.
"""

from pipelines.compositing.job import COMPOSITION_COLUMNS, main, output_schema, run
from pipelines.compositing.settings import CompositingSettings

__all__ = ["COMPOSITION_COLUMNS", "CompositingSettings", "main", "output_schema", "run"]
