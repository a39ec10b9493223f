"""`python -m pipelines.export`: the export job's command line (`pipelines.export.job.main`)."""

from pipelines.export.job import main

if __name__ == "__main__":
    raise SystemExit(main())
