"""`python -m benchmark.leaderboard`: the leaderboard's command line (`benchmark.leaderboard.cli.main`)."""

from benchmark.leaderboard.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
