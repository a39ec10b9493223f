"""`python -m pipelines.annotate`: the annotation job's command line (`pipelines.annotate.job.main`)."""

from pipelines.annotate.job import main

if __name__ == "__main__":
    raise SystemExit(main())
