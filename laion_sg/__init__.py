"""The `laion-sg` command and what only it, the demo, `bench/` and the tests use.

- `laion_sg.offline`: tiny random-weight stand-in models and fixture data, for tests and the offline demo. No
  module of `schemas`, `pipelines`, `training` or `benchmark` imports it.
"""
