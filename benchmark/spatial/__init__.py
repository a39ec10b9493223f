"""The spatial track (VISOR, as SPRIGHT reports it): two-object prompts "a {A} {relation} a {B}" over COCO's 80
classes, judged from object detections with `benchmark.metrics.visor`.

`benchmark.spatial.prompts` builds the fixed, hashed, versioned prompt set (and a stable ``--max-prompts`` sample)
and derives the per-image seeds. Modules here import neither torch nor torchmetrics unless they say so.
"""
