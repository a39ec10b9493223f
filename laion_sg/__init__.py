"""The `laion-sg` command and what only it, the demo, `bench/` and the tests use.

- `laion_sg.cli`: the `laion-sg` console script; each subcommand forwards to a job module's `main(argv)`.
- `laion_sg.demo`: the whole chain offline with tiny random-weight models (`laion-sg demo`, `make demo`).
- `laion_sg.offline`: tiny random-weight stand-in models and fixture data, for tests, the demo and `bench/`.

No module of `schemas`, `pipelines`, `training` or `benchmark` imports this package.
"""
