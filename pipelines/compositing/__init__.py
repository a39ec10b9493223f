"""Gen4Gen-style compositing (issue 12, section 1): segmented concept images pasted into engine-proposed boxes on a
background, then repainted.

- `layout`: the layout step's boxes: `Box`, the engine answer's JSON schema and parser, `validate_layout` and
  `repair_layout` (inside the canvas, minimum size, bounded overlap; repaired or rejected with a reason).
"""
