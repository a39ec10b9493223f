"""`python -m pipelines.compositing`: the compositing job's command line (`pipelines.compositing.job.main`)."""

from pipelines.compositing.job import main

if __name__ == "__main__":
    raise SystemExit(main())
