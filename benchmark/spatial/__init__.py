"""The spatial track (VISOR, as SPRIGHT reports it): two-object prompts "a {A} {relation} a {B}" over COCO's 80
classes, judged from object detections with `benchmark.metrics.visor`.

`benchmark.spatial.prompts` builds the fixed, hashed, versioned prompt set (and a stable ``--max-prompts`` sample)
and derives the per-image seeds; `benchmark.spatial.detect` finds each prompt's two objects in its images;
`benchmark.spatial.run` (``python -m benchmark.spatial.run``) runs the track for one model end to end (generate,
detect, `benchmark.metrics.VISORScore`) and writes a result record. Modules here import neither torch nor
torchmetrics unless they say so (`benchmark.spatial.run` imports torchmetrics, with its metric).
"""
