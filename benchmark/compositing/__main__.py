"""``python -m benchmark.compositing``: score a compositing output (`benchmark.compositing.score.main`)."""

from benchmark.compositing.score import main

if __name__ == "__main__":
    raise SystemExit(main())
